//! deploy/ is validated by a real kube-apiserver (server-side dry run: schema, defaulting and
//! admission), not just parsed.

use tracer_tests::apiserver_available;
use xtask::apiserver::ApiServer;

#[test]
fn kustomization_passes_server_side_dry_run() {
    if !apiserver_available() {
        return;
    }
    let api = ApiServer::start().expect("API server starts");
    let deploy = xtask::tracer::workspace_root().join("deploy");
    let deploy = deploy.to_string_lossy();
    // Namespaced objects are dry-run into their namespace, which must exist.
    api.kubectl_ok(&["apply", "-f", &format!("{deploy}/namespace.yaml")])
        .unwrap_or_else(|e| panic!("{e:#}\n{}", api.apiserver_log()));
    let out = api
        .kubectl_ok(&["apply", "--dry-run=server", "-k", &deploy])
        .unwrap_or_else(|e| panic!("server-side dry run refused deploy/: {e:#}"));
    for kind in [
        "serviceaccount/tracer",
        "clusterrole.rbac.authorization.k8s.io/tracer",
        "daemonset.apps/tracer",
    ] {
        assert!(out.contains(kind), "{kind} missing from:\n{out}");
    }
    // A broken manifest is refused, so the check above can fail.
    let bad = std::env::temp_dir().join("tracer-bad-daemonset.yaml");
    let ds = std::fs::read_to_string(format!("{deploy}/daemonset.yaml")).expect("daemonset.yaml");
    std::fs::write(
        &bad,
        ds.replace("hostNetwork: true", "hostNetwork: \"yes please\""),
    )
    .expect("write");
    assert!(
        api.kubectl_ok(&["apply", "--dry-run=server", "-f", &bad.to_string_lossy()])
            .is_err(),
        "a malformed DaemonSet must be refused"
    );
}
