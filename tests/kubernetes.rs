//! The Kubernetes manifests of `deploy/kubernetes/`: valid against the
//! Kubernetes API's schemas, and set up the way the relay needs.
//!
//! No cluster runs here. The schemas come from `kubernetes-validate`
//! (PyPI), which ships them inside the package, so nothing is downloaded:
//! `scripts/test.sh` installs a pinned version into a virtualenv under the
//! target directory and names it in `LOBBY_RELAY_KUBERNETES_VENV`. The same
//! virtualenv's Python (PyYAML, as the validator reads them) turns the
//! manifests into JSON for the relay-specific checks: probe paths, drain
//! timings, the environment variables the relay knows (from the built
//! binary's `serve --help`), security settings and selectors.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// The validator's version, as `scripts/test.sh` installs it.
const VALIDATOR_VERSION: &str = "1.37.0";
/// Kubernetes versions the manifests must be valid for: the oldest the docs
/// promise (every field used is there, at least as beta, on by default) and
/// the newest the validator knows.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.27.0", "1.37.0"];

fn manifests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes")
}

/// Every manifest under `dir` (recursively), sorted, kustomization.yaml
/// (no Kubernetes object: kustomize's own file) aside.
fn manifest_files(dir: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read the manifests' folder") {
            let path = entry.expect("a folder entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml")
                && path.file_name().is_some_and(|n| n != "kustomization.yaml")
            {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(dir, &mut files);
    files.sort();
    assert!(!files.is_empty(), "no manifest under {}", dir.display());
    files
}

/// The virtualenv holding `kubernetes-validate` (and Python with PyYAML).
struct Validator {
    venv: PathBuf,
}

impl Validator {
    fn find() -> Self {
        // scripts/test.sh says where; otherwise where it would install it:
        // the target directory of this build (the binary's grandparent).
        let venv = std::env::var_os("LOBBY_RELAY_KUBERNETES_VENV")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_BIN_EXE_lobby-relay"))
                    .ancestors()
                    .nth(2)
                    .expect("the target directory")
                    .join(format!("tools/kubernetes-validate-{VALIDATOR_VERSION}"))
            });
        let validator = Self { venv };
        let version = Command::new(validator.program())
            .arg("--version")
            .stdin(Stdio::null())
            .output();
        match version {
            Ok(out) if out.status.success() => {
                let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                assert_eq!(
                    version,
                    VALIDATOR_VERSION,
                    "kubernetes-validate in {} is not the pinned version; run scripts/test.sh",
                    validator.venv.display()
                );
            }
            _ => panic!(
                "kubernetes-validate {VALIDATOR_VERSION} is not installed in {}: this test \
                 validates the Kubernetes manifests with it. Run scripts/test.sh, which \
                 installs it, or: python3 -m venv DIR && DIR/bin/pip install \
                 kubernetes-validate=={VALIDATOR_VERSION}, then set \
                 LOBBY_RELAY_KUBERNETES_VENV=DIR.",
                validator.venv.display()
            ),
        }
        validator
    }

    fn program(&self) -> PathBuf {
        self.venv.join("bin/kubernetes-validate")
    }

    /// Validates `files` (strictly: unknown fields are errors) against one
    /// Kubernetes version. Ok when the validator passes every object of
    /// every file by name; otherwise its output. (It only warns about a kind
    /// it has no schema for, a misspelt `kind:` included, so its exit
    /// status alone is not enough.)
    fn validate(&self, files: &[PathBuf], kubernetes: &str) -> Result<String, String> {
        let out = Command::new(self.program())
            .args(["--strict", "-k", kubernetes])
            .args(files)
            .stdin(Stdio::null())
            .output()
            .expect("run kubernetes-validate");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let objects: usize = files.iter().map(|f| self.documents(f).len()).sum();
        let passed = text
            .lines()
            .filter(|l| l.starts_with("INFO ") && l.contains(" passed for resource "))
            .count();
        let complaints = text
            .lines()
            .any(|l| l.starts_with("WARN") || l.starts_with("ERROR"));
        if out.status.success() && passed == objects && !complaints {
            Ok(text)
        } else {
            Err(format!(
                "kubernetes-validate (Kubernetes {kubernetes}) passed {passed} of {objects} \
                 objects, exit {:?}:\n{text}",
                out.status.code()
            ))
        }
    }

    /// The YAML documents of a file as JSON, as PyYAML reads them.
    fn documents(&self, file: &Path) -> Vec<Value> {
        let out = Command::new(self.venv.join("bin/python"))
            .args([
                "-c",
                "import json, sys, yaml\n\
                 with open(sys.argv[1]) as f:\n\
                 \x20   docs = [d for d in yaml.safe_load_all(f) if d is not None]\n\
                 json.dump(docs, sys.stdout)",
            ])
            .arg(file)
            .stdin(Stdio::null())
            .output()
            .expect("run the virtualenv's python");
        assert!(
            out.status.success(),
            "{} is no YAML: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let docs: Value = serde_json::from_slice(&out.stdout).expect("JSON from python");
        docs.as_array().expect("a list").clone()
    }
}

/// A temporary folder, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .subsec_nanos();
        let path =
            std::env::temp_dir().join(format!("lobby-relay-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).expect("create a temporary folder");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn manifests_match_the_kubernetes_schemas() {
    let validator = Validator::find();
    let files = manifest_files(&manifests_dir());
    for kubernetes in KUBERNETES_VERSIONS {
        match validator.validate(&files, kubernetes) {
            Ok(out) => eprint!("{out}"),
            Err(e) => panic!("{e}"),
        }
    }
}

/// The validation above cannot pass vacuously: copies of the Deployment
/// with a misspelt field, a value of the wrong type, a misspelt kind or a
/// missing required field are each rejected.
#[test]
fn a_broken_manifest_is_rejected() {
    let validator = Validator::find();
    let good = std::fs::read_to_string(manifests_dir().join("deployment.yaml"))
        .expect("read deployment.yaml");
    let tmp = TempDir::new("kubernetes");
    let copy = tmp.0.join("deployment.yaml");
    std::fs::write(&copy, &good).expect("write a copy");
    validator
        .validate(std::slice::from_ref(&copy), "1.37.0")
        .expect("an unchanged copy of deployment.yaml passes");

    for (what, from, to) in [
        ("a misspelt field", "readinessProbe:", "readinesProbe:"),
        (
            "a string for a number",
            "containerPort: 8765",
            "containerPort: \"8765\"",
        ),
        ("a misspelt kind", "kind: Deployment", "kind: Deploymnet"),
        (
            "no selector",
            "  selector:\n    matchLabels:",
            "  selectr:\n    matchLabels:",
        ),
    ] {
        assert!(good.contains(from), "deployment.yaml has no {from:?}");
        std::fs::write(&copy, good.replacen(from, to, 1)).expect("write a broken copy");
        match validator.validate(std::slice::from_ref(&copy), "1.37.0") {
            Ok(out) => panic!("a Deployment with {what} ({to:?}) passed:\n{out}"),
            Err(e) => eprintln!("{what}: rejected, as it must be:\n{e}"),
        }
    }
}

/// Every `LOBBY_RELAY_*` variable the relay reads, from the built binary's
/// `serve --help` (`[env: NAME]` or `[env: NAME=value]`).
fn known_variables() -> BTreeSet<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_lobby-relay"))
        .args(["serve", "--help"])
        .env_clear()
        .stdin(Stdio::null())
        .output()
        .expect("run lobby-relay serve --help");
    assert!(out.status.success(), "serve --help: {out:?}");
    let help = String::from_utf8(out.stdout).expect("utf-8");
    let names: BTreeSet<String> = help
        .split("[env: ")
        .skip(1)
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect()
        })
        .collect();
    for name in ["LOBBY_RELAY_REDIS_URL", "LOBBY_RELAY_DRAIN_DELAY"] {
        assert!(names.contains(name), "{name} not in serve --help: {help}");
    }
    names
}

/// Every object of every manifest, with its file's name.
fn all_objects(validator: &Validator) -> Vec<(String, Value)> {
    let dir = manifests_dir();
    manifest_files(&dir)
        .into_iter()
        .flat_map(|file| {
            let name = file
                .strip_prefix(&dir)
                .expect("under the folder")
                .display()
                .to_string();
            validator
                .documents(&file)
                .into_iter()
                .map(move |doc| (name.clone(), doc))
        })
        .collect()
}

fn duration(value: &str) -> Duration {
    humantime::parse_duration(value).unwrap_or_else(|e| panic!("{value:?}: {e}"))
}

fn seconds(value: &Value) -> Duration {
    Duration::from_secs(value.as_u64().unwrap_or_else(|| panic!("seconds: {value}")))
}

/// The relay-specific rules for the manifests' objects; a list of what is
/// wrong. `known` is the relay's variables.
fn relay_rules(objects: &[(String, Value)], known: &BTreeSet<String>) -> Vec<String> {
    let mut wrong = Vec::new();
    let mut fail = |msg: String| wrong.push(msg);
    let kind = |kind: &str| {
        objects
            .iter()
            .filter(|(_, o)| o["kind"] == kind)
            .collect::<Vec<_>>()
    };

    let relays: Vec<_> = kind("Deployment")
        .into_iter()
        .filter(|(_, d)| d["metadata"]["name"] == "lobby-relay")
        .collect();
    let [(file, deployment)] = relays.as_slice() else {
        return vec![format!(
            "one Deployment lobby-relay expected, found {}",
            relays.len()
        )];
    };
    let spec = &deployment["spec"];
    let pod = &spec["template"]["spec"];
    let labels = &spec["template"]["metadata"]["labels"];
    if spec["selector"]["matchLabels"]
        .as_object()
        .is_none_or(|m| m.is_empty() || m.iter().any(|(k, v)| &labels[k] != v))
    {
        fail(format!(
            "{file}: the selector does not select the pod template's labels"
        ));
    }
    let rolling = &spec["strategy"]["rollingUpdate"];
    if spec["strategy"]["type"] != "RollingUpdate" || rolling["maxUnavailable"] != 0 {
        fail(format!(
            "{file}: a rolling update must keep every ready pod until its successor is ready \
             (maxUnavailable 0): {}",
            spec["strategy"]
        ));
    }
    if pod["enableServiceLinks"] != false {
        fail(format!(
            "{file}: enableServiceLinks must be false (Services named lobby-relay-* would \
             inject LOBBY_RELAY_* variables)"
        ));
    }
    if pod["securityContext"]["runAsNonRoot"] != true {
        fail(format!("{file}: the pod must run as non-root"));
    }
    if pod["topologySpreadConstraints"].as_array().is_none_or(|c| {
        !c.iter()
            .any(|c| c["topologyKey"] == "kubernetes.io/hostname")
    }) && pod["affinity"]["podAntiAffinity"].is_null()
    {
        fail(format!("{file}: the pods are not spread over machines"));
    }

    let containers = pod["containers"].as_array().cloned().unwrap_or_default();
    let Some(relay) = containers.iter().find(|c| {
        c["image"]
            .as_str()
            .is_some_and(|i| i.contains("lobby-relay"))
    }) else {
        wrong.push(format!("{file}: no container runs the lobby-relay image"));
        return wrong;
    };
    let mut fail = |msg: String| wrong.push(msg);

    // The port the probes and the Service use is the relay's.
    let port_name = relay["ports"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["containerPort"] == 8765))
        .and_then(|p| p["name"].as_str())
        .unwrap_or_default()
        .to_owned();
    if port_name.is_empty() {
        fail(format!("{file}: the container has no named port 8765"));
    }

    // Environment: only variables the relay knows, each at most once.
    let env = relay["env"].as_array().cloned().unwrap_or_default();
    let mut seen = BTreeSet::new();
    for var in &env {
        let name = var["name"].as_str().unwrap_or_default();
        if !known.contains(name) {
            fail(format!(
                "{file}: {name} is not a variable of `lobby-relay serve --help`"
            ));
        }
        if !seen.insert(name.to_owned()) {
            fail(format!("{file}: {name} is set twice"));
        }
    }
    let var = |name: &str| env.iter().find(|v| v["name"] == name);
    let value_of = |name: &str, default: &str| {
        var(name)
            .map(|v| v["value"].as_str().unwrap_or_default().to_owned())
            .unwrap_or_else(|| default.to_owned())
    };
    if var("LOBBY_RELAY_NODE_ID").map(|v| &v["valueFrom"]["fieldRef"]["fieldPath"])
        != Some(&Value::from("metadata.name"))
    {
        fail(format!(
            "{file}: LOBBY_RELAY_NODE_ID must be the pod's name (downward API)"
        ));
    }
    if var("LOBBY_RELAY_REDIS_URL").is_none_or(|v| v["valueFrom"]["secretKeyRef"].is_null()) {
        fail(format!(
            "{file}: LOBBY_RELAY_REDIS_URL must come from a Secret"
        ));
    }
    for secret in ["LOBBY_RELAY_ADMIN_TOKEN", "LOBBY_RELAY_LOBBY_SECRET"] {
        if var(secret).is_some_and(|v| !v["value"].is_null()) {
            fail(format!(
                "{file}: {secret} must come from a Secret, not a value"
            ));
        }
    }

    // Probes.
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &relay[probe]["httpGet"];
        if get["path"] != path || get["port"] != port_name.as_str() && get["port"] != 8765 {
            fail(format!(
                "{file}: the {probe} must GET {path} on port {port_name}: {}",
                relay[probe]
            ));
        }
    }

    // Drain timings: the pod reports not-ready for the drain delay, long
    // enough for the readiness probe to fail; the whole drain fits in the
    // grace period (a preStop hook's time counts too).
    let readiness = &relay["readinessProbe"];
    let probe_out = seconds(&readiness["periodSeconds"])
        * u32::try_from(readiness["failureThreshold"].as_u64().unwrap_or(0)).unwrap_or(0);
    let drain = duration(&value_of("LOBBY_RELAY_DRAIN_DELAY", "0s"));
    let shutdown = duration(&value_of("LOBBY_RELAY_SHUTDOWN_TIMEOUT", "10s"));
    if probe_out.is_zero() || drain < probe_out {
        fail(format!(
            "{file}: the drain delay ({drain:?}) must cover the readiness probe's \
             periodSeconds x failureThreshold ({probe_out:?})"
        ));
    }
    let pre_stop = relay["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .map_or(Duration::ZERO, Duration::from_secs);
    let grace = seconds(&pod["terminationGracePeriodSeconds"]);
    if grace < pre_stop + drain + shutdown {
        fail(format!(
            "{file}: terminationGracePeriodSeconds ({grace:?}) must cover the preStop sleep \
             ({pre_stop:?}) + drain delay ({drain:?}) + shutdown timeout ({shutdown:?})"
        ));
    }

    // Resources and the container's security settings.
    for what in ["cpu", "memory"] {
        if relay["resources"]["requests"][what].is_null() {
            fail(format!("{file}: no {what} request"));
        }
    }
    if relay["resources"]["limits"]["memory"].is_null() {
        fail(format!("{file}: no memory limit"));
    }
    let security = &relay["securityContext"];
    if security["allowPrivilegeEscalation"] != false
        || security["readOnlyRootFilesystem"] != true
        || security["capabilities"]["drop"] != serde_json::json!(["ALL"])
    {
        fail(format!(
            "{file}: the container must not escalate privileges, have a read-only root \
             and drop ALL capabilities: {security}"
        ));
    }

    // The Service and the PodDisruptionBudget select the relay's pods.
    let selects = |selector: &Value| {
        selector
            .as_object()
            .is_some_and(|m| !m.is_empty() && m.iter().all(|(k, v)| &labels[k] == v))
    };
    let services = kind("Service");
    let relay_services: Vec<_> = services
        .iter()
        .filter(|(_, s)| selects(&s["spec"]["selector"]))
        .collect();
    if !relay_services
        .iter()
        .any(|(_, s)| s["metadata"]["name"] == "lobby-relay" && s["spec"]["type"] == "ClusterIP")
    {
        fail("no ClusterIP Service lobby-relay selects the relay's pods".to_owned());
    }
    for (file, service) in &relay_services {
        for port in service["spec"]["ports"].as_array().into_iter().flatten() {
            if port["targetPort"] != port_name.as_str() && port["targetPort"] != 8765 {
                fail(format!(
                    "{file}: Service {} targets port {} of the relay, not {port_name}",
                    service["metadata"]["name"], port["targetPort"]
                ));
            }
        }
    }
    if !kind("PodDisruptionBudget")
        .iter()
        .any(|(_, p)| selects(&p["spec"]["selector"]["matchLabels"]))
    {
        fail("no PodDisruptionBudget selects the relay's pods".to_owned());
    }
    wrong
}

#[test]
fn the_manifests_are_set_up_for_the_relay() {
    let validator = Validator::find();
    let objects = all_objects(&validator);
    let known = known_variables();
    let wrong = relay_rules(&objects, &known);
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // kustomization.yaml applies every manifest of the folder itself
    // (examples/ are optional) and nothing that does not exist.
    let dir = manifests_dir();
    let kustomization = validator.documents(&dir.join("kustomization.yaml"));
    let listed: BTreeSet<String> = kustomization[0]["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| r.as_str().expect("a file name").to_owned())
        .collect();
    let present: BTreeSet<String> = manifest_files(&dir)
        .iter()
        .filter(|f| f.parent() == Some(dir.as_path()))
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        listed, present,
        "kustomization.yaml's resources and the manifests in deploy/kubernetes/"
    );

    // The Secret the Deployment reads has the key it requires.
    let secret = objects
        .iter()
        .find(|(_, o)| o["kind"] == "Secret" && o["metadata"]["name"] == "lobby-relay")
        .map(|(_, o)| o)
        .expect("secret.yaml: Secret lobby-relay");
    assert!(
        secret["stringData"]["redis-url"]
            .as_str()
            .is_some_and(|u| u.starts_with("redis://")),
        "the example Secret has no redis-url: {secret}"
    );
}

/// The rules above are not vacuous: each of these changes to the Deployment
/// is caught.
#[test]
fn the_relay_rules_catch_a_misconfigured_deployment() {
    let validator = Validator::find();
    let objects = all_objects(&validator);
    let known = known_variables();
    let container = "/spec/template/spec/containers/0";
    let cases: [(&str, &str, Value, &str); 7] = [
        (
            "a short grace period",
            "/spec/template/spec/terminationGracePeriodSeconds",
            Value::from(10),
            "terminationGracePeriodSeconds",
        ),
        (
            "readiness on /healthz",
            "/readinessProbe/httpGet/path",
            Value::from("/healthz"),
            "readinessProbe",
        ),
        (
            "liveness on /readyz",
            "/livenessProbe/httpGet/path",
            Value::from("/readyz"),
            "livenessProbe",
        ),
        (
            "a variable the relay does not know",
            "/env/0/name",
            Value::from("LOBBY_RELAY_NODE_NAME"),
            "LOBBY_RELAY_NODE_NAME is not a variable",
        ),
        (
            "a drain delay shorter than the probe",
            "/readinessProbe/periodSeconds",
            Value::from(10),
            "drain delay",
        ),
        (
            "service links",
            "/spec/template/spec/enableServiceLinks",
            Value::from(true),
            "enableServiceLinks",
        ),
        (
            "a writable root",
            "/securityContext/readOnlyRootFilesystem",
            Value::from(false),
            "read-only root",
        ),
    ];
    for (what, pointer, value, expected) in cases {
        let mut broken = objects.clone();
        let (_, deployment) = broken
            .iter_mut()
            .find(|(_, o)| o["kind"] == "Deployment" && o["metadata"]["name"] == "lobby-relay")
            .expect("the relay's Deployment");
        let pointer = if pointer.starts_with("/spec") {
            pointer.to_owned()
        } else {
            format!("{container}{pointer}")
        };
        *deployment
            .pointer_mut(&pointer)
            .unwrap_or_else(|| panic!("{pointer} in the Deployment")) = value;
        let wrong = relay_rules(&broken, &known);
        assert!(
            wrong.iter().any(|w| w.contains(expected)),
            "{what}: not caught (wanted {expected:?}): {wrong:?}"
        );
    }
}
