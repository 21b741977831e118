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
    let ds = std::fs::read_to_string(format!("{deploy}/daemonset.yaml")).expect("daemonset.yaml");
    // The peer service's Secret, as `tracer certs --secret` prints it, is what the DaemonSet
    // mounts and the API server takes.
    let dir = std::env::temp_dir().join(format!("tracer-deploy-certs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let certs = std::process::Command::new(xtask::tracer::tracer_bin())
        .args(["certs", "--out"])
        .arg(&dir)
        .args(["--secret", "tracer-peer-tls"])
        .output()
        .expect("tracer certs runs");
    assert!(
        certs.status.success(),
        "{}",
        String::from_utf8_lossy(&certs.stderr)
    );
    let secret = dir.join("secret.yaml");
    std::fs::write(&secret, &certs.stdout).expect("write");
    let out = api
        .kubectl_ok(&["apply", "--dry-run=server", "-f", &secret.to_string_lossy()])
        .unwrap_or_else(|e| panic!("the Secret from tracer certs was refused: {e:#}"));
    assert!(out.contains("secret/tracer-peer-tls"), "{out}");
    assert!(
        ds.contains("secretName: tracer-peer-tls"),
        "the DaemonSet mounts the Secret tracer certs makes"
    );
    let _ = std::fs::remove_dir_all(&dir);
    // A broken manifest is refused, so the check above can fail.
    let bad = std::env::temp_dir().join("tracer-bad-daemonset.yaml");
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
