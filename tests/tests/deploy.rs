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

/// `kubectl kustomize` of `dir` (relative to the workspace root), one JSON value per object.
fn kustomize(dir: &str) -> Vec<serde_json::Value> {
    let out = std::process::Command::new("kubectl")
        .args(["kustomize", dir])
        .current_dir(xtask::tracer::workspace_root())
        .output()
        .expect("kubectl runs");
    assert!(
        out.status.success(),
        "kubectl kustomize {dir}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split("\n---\n")
        .map(|doc| serde_saphyr::from_str(doc).expect("kustomize output parses"))
        .collect()
}

fn kubectl_available() -> bool {
    if xtask::image::which("kubectl") {
        return true;
    }
    if tracer_tests::ci() {
        panic!("kubectl not found (CI=true requires it)");
    }
    eprintln!("SKIPPED: kubectl not found");
    false
}

fn find<'a>(objects: &'a [serde_json::Value], kind: &str) -> Option<&'a serde_json::Value> {
    objects.iter().find(|o| o["kind"] == kind)
}

/// The default kustomization uses the locally built image and stays off Fargate, Windows and
/// unknown architectures; an overlay overrides the image through the `images:` entry and adds
/// the PodMonitor component, whose selector and port match the DaemonSet's pods.
#[test]
fn overlay_sets_image_and_adds_podmonitor() {
    if !kubectl_available() {
        return;
    }
    let base = kustomize("deploy");
    let ds = find(&base, "DaemonSet").expect("DaemonSet");
    let pod = &ds["spec"]["template"];
    assert_eq!(
        pod["spec"]["containers"][0]["image"],
        "localhost/tracer:dev"
    );
    assert!(find(&base, "PodMonitor").is_none(), "PodMonitor is opt-in");
    let terms = &pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"];
    let exprs = terms[0]["matchExpressions"]
        .as_array()
        .expect("expressions");
    assert_eq!(
        terms.as_array().map(Vec::len),
        Some(1),
        "one term: all must hold"
    );
    assert!(
        exprs
            .iter()
            .any(|e| e["key"] == "eks.amazonaws.com/compute-type"
                && e["operator"] == "NotIn"
                && e["values"] == serde_json::json!(["fargate"])),
        "{exprs:#?}"
    );
    assert!(exprs.iter().any(|e| e["key"] == "kubernetes.io/os"
        && e["operator"] == "In"
        && e["values"] == serde_json::json!(["linux"])));

    // An overlay as the README shows it, inside target/ (kustomize refuses absolute paths).
    let dir = format!("target/deploy-test-overlay-{}", std::process::id());
    let abs = xtask::tracer::workspace_root().join(&dir);
    std::fs::create_dir_all(&abs).expect("overlay dir");
    std::fs::write(
        abs.join("kustomization.yaml"),
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
         resources:\n  - ../../deploy\ncomponents:\n  - ../../deploy/components/podmonitor\n\
         images:\n  - name: localhost/tracer\n    \
         newName: 123456789012.dkr.ecr.eu-west-1.amazonaws.com/tracer\n    newTag: 0.1.0\n",
    )
    .expect("write overlay");
    let objects = kustomize(&dir);
    let _ = std::fs::remove_dir_all(&abs);
    let ds = find(&objects, "DaemonSet").expect("DaemonSet");
    let pod = &ds["spec"]["template"];
    let container = &pod["spec"]["containers"][0];
    assert_eq!(
        container["image"],
        "123456789012.dkr.ecr.eu-west-1.amazonaws.com/tracer:0.1.0"
    );
    let pm = find(&objects, "PodMonitor").expect("PodMonitor from the component");
    assert_eq!(pm["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(pm["metadata"]["namespace"], ds["metadata"]["namespace"]);
    let selector = pm["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels");
    for (k, v) in selector {
        assert_eq!(
            &pod["metadata"]["labels"][k], v,
            "selector {k} vs pod labels"
        );
    }
    let port = &pm["spec"]["podMetricsEndpoints"][0]["port"];
    assert!(
        container["ports"]
            .as_array()
            .is_some_and(|ps| ps.iter().any(|p| &p["name"] == port)),
        "PodMonitor port {port} is not a container port"
    );
}
