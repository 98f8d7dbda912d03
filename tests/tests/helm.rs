//! The Helm chart in `helm/`, rendered and read back. No NATS, PostgreSQL or cluster: it needs
//! helm (`KAIROS_HELM`, else what `scripts/helm.sh` prints) and the deployment checkers' Python
//! (`KAIROS_OPS_PYTHON`, else what `scripts/pyenv.sh scripts/ops-requirements.txt` prints), whose
//! `kubernetes_validate` and PyYAML turn the rendered YAML into checked JSON.
//!
//! - `helm lint` and `helm lint --strict` pass, and `helm template` renders, with the default
//!   values (external NATS and PostgreSQL) and with `values-production.yaml` (both bundled).
//!   Offline, the bundled charts cannot be fetched: production is rendered from a copy of the
//!   chart whose `charts/` holds empty stand-ins named `nats` and `postgresql` (what
//!   `helm dependency build` would put there, less their manifests). The real `charts/` holds
//!   placeholders that stop an enabled dependency with what to run.
//! - Every rendered resource validates, strictly (no unknown field), against the schemas of each
//!   Kubernetes version in [`K8S_VERSIONS`]. kubernetes-validate has no schema for custom
//!   resources: the only kind allowed without one is the ServiceMonitor
//!   (`monitoring.coreos.com/v1`), whose fields are asserted here instead.
//! - What the manifests promise: every pod non-root with a read-only root filesystem, no
//!   privilege escalation, no capabilities, the runtime's seccomp profile, requests and limits,
//!   no service links and no API token; the API probed on `/health/live` and `/health/ready`;
//!   one Deployment per module of `values.yaml`'s list running `kairos consume <name>`, the list
//!   being the binary's registry, and a changed list changing the Deployments; no secret in a
//!   ConfigMap; the migrate Job a hook that only uses hook resources; NetworkPolicies around every
//!   pod; and a configuration (the ConfigMap's `kairos.toml` plus each container's `KAIROS_*`
//!   variables) that Kairos itself accepts, with the files it names mounted.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use kairos_tests::output_text;
use serde_json::Value;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
/// The oldest Kubernetes the chart supports (Chart.yaml's kubeVersion) and a recent one.
const K8S_VERSIONS: &[&str] = &["1.30.0", "1.35.0"];
const RELEASE: &str = "kairos";
const NAMESPACE: &str = "kairos-test";

// ---------------------------------------------------------------------------------------------
// Tools.

/// `$var` when set, else the path `script args` prints.
fn tool(var: &str, script: &[&str]) -> String {
    if let Ok(p) = std::env::var(var)
        && !p.is_empty()
    {
        return p;
    }
    let out = Command::new("bash")
        .args(script)
        .current_dir(ROOT)
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "{} failed (or set {var}):\n{}",
        script.join(" "),
        output_text(&out)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn helm_bin() -> &'static str {
    static HELM: OnceLock<String> = OnceLock::new();
    HELM.get_or_init(|| tool("KAIROS_HELM", &["scripts/helm.sh"]))
}

fn python() -> &'static str {
    static PY: OnceLock<String> = OnceLock::new();
    PY.get_or_init(|| {
        tool(
            "KAIROS_OPS_PYTHON",
            &["scripts/pyenv.sh", "scripts/ops-requirements.txt"],
        )
    })
}

fn helm(args: &[&str]) -> Output {
    Command::new(helm_bin())
        .args(args)
        .current_dir(ROOT)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", helm_bin()))
}

/// Reads YAML documents (stdin) into JSON, each with the template it came from and, when
/// versions are given, its strict validation against each: "valid", "no-schema" or the error.
/// A Secret's values come decoded under "decoded".
const DRIVER: &str = r#"
import base64, json, re, sys
import yaml
import kubernetes_validate as kv

versions = json.loads(sys.argv[1])
out = []
for chunk in re.split(r"^---[ \t]*$", sys.stdin.read(), flags=re.M):
    m = re.search(r"^# Source: (.+)$", chunk, flags=re.M)
    doc = yaml.safe_load(chunk)
    if not doc:
        continue
    item = {"source": m.group(1) if m else None, "resource": doc, "validation": {}}
    for v in versions:
        try:
            kv.validate(doc, v, strict=True)
            item["validation"][v] = "valid"
        except kv.SchemaNotFoundError:
            item["validation"][v] = "no-schema"
        except kv.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            item["validation"][v] = "invalid: %s: %s" % (path, e.message)
    if isinstance(doc, dict) and doc.get("kind") == "Secret":
        decoded = {k: base64.b64decode(v).decode() for k, v in (doc.get("data") or {}).items()}
        decoded.update(doc.get("stringData") or {})
        item["decoded"] = decoded
    out.append(item)
json.dump(out, sys.stdout)
"#;

fn yaml_to_json(yaml: &[u8], versions: &[&str]) -> Vec<Value> {
    let mut child = Command::new(python())
        .arg("-c")
        .arg(DRIVER)
        .arg(serde_json::to_string(versions).unwrap())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", python()));
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(yaml).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the YAML driver failed:\n{}",
        output_text(&out)
    );
    serde_json::from_slice::<Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn yaml_file(path: &Path) -> Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    yaml_to_json(&bytes, &[])
        .into_iter()
        .next()
        .expect("one document")["resource"]
        .clone()
}

// ---------------------------------------------------------------------------------------------
// Charts and renders.

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("kairos-helm-{what}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn chart_dir() -> PathBuf {
    Path::new(ROOT).join("helm")
}

/// A copy of the chart as `helm dependency build` leaves it, offline: `charts/` holds a chart
/// named after each dependency, in place of the placeholder, with no manifests of its own.
fn bundled_chart() -> TempDir {
    let tmp = TempDir::new("bundled");
    let chart = tmp.0.join("kairos");
    copy_dir(&chart_dir(), &chart);
    for entry in std::fs::read_dir(chart.join("charts")).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    for name in ["nats", "postgresql"] {
        let dir = chart.join("charts").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("Chart.yaml"),
            format!("apiVersion: v2\nname: {name}\nversion: 1.0.0\n"),
        )
        .unwrap();
    }
    tmp
}

/// Which values a render uses.
enum Values {
    Default,
    Production,
}

/// The chart directory and `-f` file for `values`; the TempDir lives as long as the paths.
fn chart_for(values: &Values) -> (Option<TempDir>, PathBuf, Vec<String>) {
    match values {
        Values::Default => (None, chart_dir(), vec![]),
        Values::Production => {
            let tmp = bundled_chart();
            let chart = tmp.0.join("kairos");
            let file = chart.join("values-production.yaml");
            (
                Some(tmp),
                chart,
                vec!["-f".into(), file.display().to_string()],
            )
        }
    }
}

/// `helm template` of `chart` with `extra` arguments; the output, or the failure.
fn template(chart: &Path, extra: &[String]) -> Result<Vec<u8>, String> {
    let chart = chart.display().to_string();
    let mut args = vec![
        "template",
        RELEASE,
        chart.as_str(),
        "--namespace",
        NAMESPACE,
    ];
    args.extend(extra.iter().map(String::as_str));
    let out = helm(&args);
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(output_text(&out))
    }
}

/// The rendered resources, validated against [`K8S_VERSIONS`].
struct Render {
    items: Vec<Value>,
}

impl Render {
    fn of(values: Values, extra: &[&str]) -> Self {
        let (_tmp, chart, mut args) = chart_for(&values);
        args.extend(extra.iter().map(|s| s.to_string()));
        let yaml = template(&chart, &args).unwrap_or_else(|e| panic!("helm template:\n{e}"));
        Render {
            items: yaml_to_json(&yaml, K8S_VERSIONS),
        }
    }

    fn resources(&self) -> impl Iterator<Item = &Value> {
        self.items.iter().map(|i| &i["resource"])
    }

    fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.resources().filter(move |r| r["kind"] == kind)
    }

    fn named(&self, kind: &str, name: &str) -> &Value {
        self.resources()
            .find(|r| r["kind"] == kind && r["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    }

    /// (workload name, pod spec) of every Deployment and Job.
    fn pods(&self) -> Vec<(String, &Value)> {
        self.resources()
            .filter(|r| r["kind"] == "Deployment" || r["kind"] == "Job")
            .map(|r| {
                (
                    format!("{} {}", r["kind"].as_str().unwrap(), name(r)),
                    &r["spec"]["template"]["spec"],
                )
            })
            .collect()
    }

    fn projection_deployments(&self) -> Vec<&Value> {
        self.of_kind("Deployment")
            .filter(|d| labels(d).get("app.kubernetes.io/component") == Some(&"projection"))
            .collect()
    }
}

fn name(r: &Value) -> &str {
    r["metadata"]["name"].as_str().unwrap_or("?")
}

fn labels(r: &Value) -> BTreeMap<&str, &str> {
    obj_str(&r["metadata"]["labels"])
}

fn obj_str(v: &Value) -> BTreeMap<&str, &str> {
    v.as_object()
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.as_str(), s)))
                .collect()
        })
        .unwrap_or_default()
}

fn arr(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

fn containers(pod: &Value) -> impl Iterator<Item = &Value> {
    arr(&pod["containers"])
        .iter()
        .chain(arr(&pod["initContainers"]))
}

/// A container's setting, else its pod's.
fn effective<'a>(pod: &'a Value, container: &'a Value, key: &str) -> &'a Value {
    match &container["securityContext"][key] {
        Value::Null => &pod["securityContext"][key],
        v => v,
    }
}

fn annotation<'a>(r: &'a Value, key: &str) -> Option<&'a str> {
    r["metadata"]["annotations"][key].as_str()
}

// ---------------------------------------------------------------------------------------------
// Lint and schemas.

#[test]
fn lint_passes_strictly_with_both_values_files() {
    for values in [Values::Default, Values::Production] {
        let (_tmp, chart, args) = chart_for(&values);
        let chart = chart.display().to_string();
        for strict in [false, true] {
            let mut all = vec!["lint", chart.as_str()];
            if strict {
                all.push("--strict");
            }
            all.extend(args.iter().map(String::as_str));
            let out = helm(&all);
            assert!(
                out.status.success(),
                "helm {}:\n{}",
                all.join(" "),
                output_text(&out)
            );
        }
    }
}

#[test]
fn every_resource_validates_against_the_kubernetes_schemas() {
    for (label, render) in [
        ("default", Render::of(Values::Default, &[])),
        ("production", Render::of(Values::Production, &[])),
    ] {
        assert!(!render.items.is_empty(), "{label}: nothing rendered");
        let mut without_schema = BTreeSet::new();
        for item in &render.items {
            let r = &item["resource"];
            let what = format!("{label}: {} {} ({})", r["kind"], name(r), item["source"]);
            for v in K8S_VERSIONS {
                match item["validation"][v].as_str() {
                    Some("valid") => {}
                    Some("no-schema") => {
                        without_schema.insert(format!(
                            "{} {}",
                            r["apiVersion"].as_str().unwrap(),
                            r["kind"].as_str().unwrap()
                        ));
                    }
                    other => panic!("{what} against Kubernetes {v}: {other:?}"),
                }
            }
        }
        // Custom resources have no schema in kubernetes-validate: exactly the ServiceMonitor,
        // which production enables and the defaults do not.
        let expected: BTreeSet<String> = match label {
            "production" => ["monitoring.coreos.com/v1 ServiceMonitor".to_owned()].into(),
            _ => BTreeSet::new(),
        };
        assert_eq!(without_schema, expected, "{label}: kinds without a schema");
    }
}

// ---------------------------------------------------------------------------------------------
// Pods.

#[test]
fn every_pod_runs_locked_down_with_requests_and_limits() {
    for (label, render) in [
        ("default", Render::of(Values::Default, &[])),
        ("production", Render::of(Values::Production, &[])),
    ] {
        let pods = render.pods();
        assert!(pods.len() >= 3, "{label}: {} pods", pods.len());
        for (workload, pod) in pods {
            let at = format!("{label}: {workload}");
            assert_eq!(pod["enableServiceLinks"], false, "{at}: service links");
            assert_eq!(
                pod["automountServiceAccountToken"], false,
                "{at}: API token"
            );
            let tmp_volumes: BTreeSet<&str> = arr(&pod["volumes"])
                .iter()
                .filter(|v| v["emptyDir"].is_object())
                .filter_map(|v| v["name"].as_str())
                .collect();
            for c in containers(pod) {
                let at = format!("{at}, container {}", c["name"]);
                assert_eq!(
                    effective(pod, c, "runAsNonRoot"),
                    true,
                    "{at}: runAsNonRoot"
                );
                let uid = effective(pod, c, "runAsUser").as_i64();
                assert!(uid.is_some_and(|u| u > 0), "{at}: runAsUser {uid:?}");
                assert_eq!(
                    c["securityContext"]["readOnlyRootFilesystem"], true,
                    "{at}: read-only root filesystem"
                );
                assert_eq!(
                    c["securityContext"]["allowPrivilegeEscalation"], false,
                    "{at}: privilege escalation"
                );
                assert!(
                    arr(&c["securityContext"]["capabilities"]["drop"]).contains(&"ALL".into()),
                    "{at}: capabilities not dropped"
                );
                assert!(
                    c["securityContext"]["capabilities"]["add"].is_null(),
                    "{at}: capabilities added"
                );
                assert_eq!(
                    effective(pod, c, "seccompProfile")["type"],
                    "RuntimeDefault",
                    "{at}: seccomp profile"
                );
                for kind in ["requests", "limits"] {
                    for resource in ["cpu", "memory"] {
                        assert!(
                            !c["resources"][kind][resource].is_null(),
                            "{at}: no {kind}.{resource}"
                        );
                    }
                }
                assert!(
                    arr(&c["volumeMounts"])
                        .iter()
                        .any(|m| m["mountPath"] == "/tmp"
                            && m["name"].as_str().is_some_and(|n| tmp_volumes.contains(n))),
                    "{at}: /tmp is not an emptyDir"
                );
            }
        }
    }
}

#[test]
fn the_api_is_probed_on_its_health_endpoints() {
    for (label, render) in [
        ("default", Render::of(Values::Default, &[])),
        ("production", Render::of(Values::Production, &[])),
    ] {
        let api = render.named("Deployment", "kairos-api");
        let c = &api["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["args"], serde_json::json!(["serve", "--no-projections"]));
        let port = &arr(&c["ports"])[0];
        assert_eq!(port["name"], "http", "{label}");
        for (probe, path) in [
            ("startupProbe", "/health/live"),
            ("livenessProbe", "/health/live"),
            ("readinessProbe", "/health/ready"),
        ] {
            let get = &c[probe]["httpGet"];
            assert_eq!(get["path"], path, "{label}: {probe}");
            assert!(
                get["port"] == port["name"] || get["port"] == port["containerPort"],
                "{label}: {probe} probes port {}, the API listens on {port}",
                get["port"]
            );
        }
        // The API listens where the probes and the Service look.
        let toml = config_toml(&render);
        assert!(
            toml.contains(&format!("addr = \"0.0.0.0:{}\"", port["containerPort"])),
            "{label}: http.addr in\n{toml}"
        );
        let svc = render.named("Service", "kairos");
        assert_eq!(svc["spec"]["ports"][0]["targetPort"], "http", "{label}");
        // HPA (autoscaling/v2) and PodDisruptionBudget on the API Deployment.
        let hpa = render.named("HorizontalPodAutoscaler", "kairos-api");
        assert_eq!(hpa["apiVersion"], "autoscaling/v2");
        assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "kairos-api");
        assert!(
            api["spec"]["replicas"].is_null(),
            "{label}: the HPA owns the replica count"
        );
        let pdb = render.named("PodDisruptionBudget", "kairos-api");
        assert_eq!(
            obj_str(&pdb["spec"]["selector"]["matchLabels"]),
            obj_str(&api["spec"]["selector"]["matchLabels"]),
            "{label}: the PDB selects the API pods"
        );
        // `kairos consume` serves no HTTP: no probe pretends to check it.
        for d in render.projection_deployments() {
            let c = &d["spec"]["template"]["spec"]["containers"][0];
            for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
                assert!(c[probe].is_null(), "{label}: {} has a {probe}", name(d));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Projections.

/// (name, args, replicas) of each projection Deployment, in render order.
fn projection_runs(render: &Render) -> Vec<(String, Vec<String>, i64)> {
    render
        .projection_deployments()
        .into_iter()
        .map(|d| {
            let c = &d["spec"]["template"]["spec"]["containers"][0];
            let args = arr(&c["args"])
                .iter()
                .map(|a| a.as_str().unwrap().to_owned())
                .collect();
            (
                name(d).to_owned(),
                args,
                d["spec"]["replicas"].as_i64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn one_deployment_per_module_of_the_registry_runs_kairos_consume() {
    let values = yaml_file(&chart_dir().join("values.yaml"));
    let listed: Vec<&str> = arr(&values["projections"])
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed,
        kairos::startup::registry().names(),
        "values.yaml's projections are the binary's registry, in its order"
    );
    for (label, render) in [
        ("default", Render::of(Values::Default, &[])),
        ("production", Render::of(Values::Production, &[])),
    ] {
        let runs = projection_runs(&render);
        let names: Vec<&str> = runs.iter().map(|(_, a, _)| a[1].as_str()).collect();
        assert_eq!(names, listed, "{label}");
        for (deployment, args, replicas) in &runs {
            assert_eq!(args.len(), 2, "{label}: {deployment} args {args:?}");
            assert_eq!(args[0], "consume", "{label}: {deployment}");
            assert_eq!(
                *deployment,
                format!("kairos-projection-{}", args[1]),
                "{label}"
            );
            let partitioned = label == "production" && args[1] == "budgets";
            let expected = match (label, partitioned) {
                (_, true) => 3,
                ("production", false) => 2,
                _ => 1,
            };
            assert_eq!(*replicas, expected, "{label}: {deployment} replicas");
            // Only a partitioned projection's replicas are told the partitions they share.
            let d = render.named("Deployment", deployment);
            let env = arr(&d["spec"]["template"]["spec"]["containers"][0]["env"]);
            let partitions: Vec<&Value> = env
                .iter()
                .filter(|e| e["name"] == "KAIROS_PROJECTIONS_PARTITIONS")
                .map(|e| &e["value"])
                .collect();
            if partitioned {
                assert_eq!(partitions, [&Value::from("6")], "{label}: {deployment}");
            } else {
                assert!(
                    partitions.is_empty(),
                    "{label}: {deployment}: {partitions:?}"
                );
            }
        }
    }
}

#[test]
fn the_module_list_in_values_makes_the_deployments() {
    let tmp = TempDir::new("values");
    // router left out; a module with an underscore (examples/task-stats) added, with its own
    // replicas and resources over the defaults.
    let file = tmp.0.join("projections.yaml");
    std::fs::write(
        &file,
        "projections:\n  - name: budgets\n  - name: access\n  - name: task_stats\n    replicas: 2\n    resources:\n      limits:\n        memory: 3Gi\n",
    )
    .unwrap();
    let f = file.display().to_string();
    let render = Render::of(Values::Default, &["-f", &f]);
    let runs = projection_runs(&render);
    assert_eq!(
        runs,
        vec![
            (
                "kairos-projection-budgets".to_owned(),
                vec!["consume".to_owned(), "budgets".to_owned()],
                1
            ),
            (
                "kairos-projection-access".to_owned(),
                vec!["consume".to_owned(), "access".to_owned()],
                1
            ),
            (
                "kairos-projection-task-stats".to_owned(),
                vec!["consume".to_owned(), "task_stats".to_owned()],
                2
            ),
        ]
    );
    let task_stats = render.named("Deployment", "kairos-projection-task-stats");
    let resources = &task_stats["spec"]["template"]["spec"]["containers"][0]["resources"];
    assert_eq!(
        resources["limits"]["memory"], "3Gi",
        "the entry's own limit"
    );
    assert_eq!(
        resources["requests"]["memory"], "128Mi",
        "projectionDefaults'"
    );
    assert_eq!(
        labels(task_stats).get("kairos-projection"),
        Some(&"task_stats")
    );

    // A module listed twice is refused.
    let twice = tmp.0.join("twice.yaml");
    std::fs::write(
        &twice,
        "projections:\n  - name: budgets\n  - name: budgets\n",
    )
    .unwrap();
    let err = template(&chart_dir(), &["-f".into(), twice.display().to_string()]).unwrap_err();
    assert!(err.contains("budgets is listed twice"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Secrets and configuration.

fn config_toml(render: &Render) -> String {
    render.named("ConfigMap", "kairos-config")["data"]["kairos.toml"]
        .as_str()
        .unwrap()
        .to_owned()
}

const BOOTSTRAP_KEY: &str =
    "kairos_4f3c9a0e7b21d85c6e9f0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f";
const KEY_SECRET: &str = "a-key-secret-of-forty-characters-0123456";
const DB_PASSWORD: &str = "db-pass-9f8e7d";
const NATS_PASSWORD: &str = "nats-pass-1a2b3c";
const WEBHOOK_SECRET: &str = "webhook-secret-5d6e7f8a";

#[test]
fn no_configmap_holds_a_secret() {
    let db_url = format!("postgres://kairos:{DB_PASSWORD}@db.internal:5432/kairos");
    let sets = [
        format!("secrets.bootstrapAdminKey={BOOTSTRAP_KEY}"),
        format!("secrets.keySecret={KEY_SECRET}"),
        format!("externalDatabase.url={db_url}"),
        "natsAuth.user=kairos".to_owned(),
        format!("natsAuth.password={NATS_PASSWORD}"),
        "secrets.anomaliesWebhookUrl=https://alerts.example/hook/t0ken".to_owned(),
        format!("secrets.anomaliesWebhookSecret={WEBHOOK_SECRET}"),
    ];
    let mut args = vec![];
    for s in &sets {
        args.push("--set");
        args.push(s.as_str());
    }
    let with_secrets = Render::of(Values::Default, &args);
    let secrets = [
        BOOTSTRAP_KEY,
        KEY_SECRET,
        DB_PASSWORD,
        NATS_PASSWORD,
        WEBHOOK_SECRET,
        "t0ken",
    ];
    // They are in the Secret, so that the test could see them in a ConfigMap.
    let secret = with_secrets
        .items
        .iter()
        .find(|i| i["resource"]["kind"] == "Secret" && name(&i["resource"]) == "kairos")
        .expect("the chart's Secret");
    let stored: String = secret["decoded"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_str().unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    for s in secrets {
        assert!(stored.contains(s), "{s} is not in the Secret");
    }

    let generated = Render::of(Values::Default, &[]);
    let generated_key = generated
        .items
        .iter()
        .find(|i| i["resource"]["kind"] == "Secret" && name(&i["resource"]) == "kairos")
        .expect("the chart's Secret")["decoded"]["bootstrap-admin-key"]
        .as_str()
        .expect("a generated bootstrap key")
        .to_owned();
    assert!(generated_key.starts_with("kairos_") && generated_key.len() >= 32);

    for (label, render, secrets) in [
        ("set", &with_secrets, secrets.to_vec()),
        ("generated", &generated, vec![generated_key.as_str()]),
        ("production", &Render::of(Values::Production, &[]), vec![]),
    ] {
        let maps: Vec<&Value> = render.of_kind("ConfigMap").collect();
        assert!(!maps.is_empty(), "{label}: no ConfigMap");
        for cm in maps {
            for (key, value) in cm["data"].as_object().unwrap() {
                let value = value.as_str().unwrap();
                let at = format!("{label}: ConfigMap {} key {key}", name(cm));
                for s in &secrets {
                    assert!(!value.contains(s), "{at} holds {s}:\n{value}");
                }
                assert!(
                    url_passwords(value).is_empty(),
                    "{at} holds a URL with a password:\n{value}"
                );
                assert!(
                    !value.contains("kairos_"),
                    "{at} holds something like an API key:\n{value}"
                );
                for line in value.lines() {
                    let k = line.split('=').next().unwrap_or("").trim();
                    assert!(
                        !(k.contains("secret") || k.contains("password") || k.contains("token")),
                        "{at}: {line}"
                    );
                }
            }
        }
        // Every container reads its secrets from a Secret, never from a literal value.
        for (workload, pod) in render.pods() {
            for c in containers(pod) {
                for env in arr(&c["env"]) {
                    if let Some(v) = env["value"].as_str() {
                        // A password in a literal URL is only a reference to a variable from
                        // a Secret ($(POSTGRESQL_PASSWORD)).
                        for password in url_passwords(v) {
                            let var = password
                                .strip_prefix("$(")
                                .and_then(|p| p.strip_suffix(')'))
                                .unwrap_or_else(|| panic!("{label}: {workload}: {env}"));
                            let from = arr(&c["env"]).iter().find(|e| e["name"] == var);
                            assert!(
                                from.is_some_and(|e| e["valueFrom"]["secretKeyRef"].is_object()),
                                "{label}: {workload}: {var} is not from a Secret"
                            );
                        }
                        for s in &secrets {
                            assert!(!v.contains(s), "{label}: {workload}: {env}");
                        }
                    }
                }
            }
        }
    }

    // What would put a secret in the ConfigMap is refused.
    for (set, says) in [
        (
            "config.auth.key_secret=x",
            "config.auth.key_secret is set by the chart",
        ),
        (
            "config.database.url=postgres://a:b@c/d",
            "config.database.url is set by the chart",
        ),
        (
            "config.anomalies.webhook_secret=x",
            "secrets.anomaliesWebhookSecret",
        ),
        ("config.billing.api_token=x", "looks like a secret"),
        (
            "externalNats.url=nats://kairos:pw@nats:4222",
            "must not hold credentials",
        ),
    ] {
        let err = template(&chart_dir(), &["--set".into(), set.into()]).unwrap_err();
        assert!(err.contains(says), "--set {set}: {err}");
    }
}

/// The passwords of the URLs in `s` (`scheme://user:password@…`).
fn url_passwords(s: &str) -> Vec<&str> {
    s.match_indices("://")
        .filter_map(|(i, _)| {
            let rest = &s[i + 3..];
            let end = rest
                .find(|c: char| c.is_whitespace() || c == '"' || c == '/')
                .unwrap_or(rest.len());
            let (userinfo, _) = rest[..end].rsplit_once('@')?;
            Some(userinfo.split_once(':')?.1)
        })
        .collect()
}

/// `KAIROS_<SECTION>_<KEY>` (or `__`) as Kairos maps it: (section, key).
fn config_key(var: &str) -> (String, String) {
    if var == "KAIROS_BOOTSTRAP_ADMIN_KEY" {
        return ("auth".into(), "bootstrap_admin_key".into());
    }
    let rest = var.strip_prefix("KAIROS_").unwrap().to_ascii_lowercase();
    let (section, key) = rest
        .split_once("__")
        .or_else(|| rest.split_once('_'))
        .unwrap_or_else(|| panic!("{var} is not KAIROS_<SECTION>_<KEY>"));
    (section.into(), key.into())
}

/// A value of the right form for a key that comes from a Secret.
fn stand_in(section: &str, key: &str) -> &'static str {
    match (section, key) {
        ("database", "url") => "postgres://kairos:pw@db.internal:5432/kairos",
        ("auth", "bootstrap_admin_key") => BOOTSTRAP_KEY,
        ("auth", "key_secret") => KEY_SECRET,
        ("anomalies", "webhook_url") => "https://alerts.example/hook",
        ("anomalies", "webhook_secret") => WEBHOOK_SECRET,
        ("nats", "user") => "kairos",
        ("nats", "nkey_seed") => "SUACSSL3UAHUDXKFSNVUZRF5UHPMWZ6BFDTJ7M6USDXIEDNPPQYYYCU3VY",
        _ => "stand-in",
    }
}

/// `toml` with `key = value` in `[section]`, in place of the key's line if it is there (a
/// variable wins over the file). The chart writes one `key = value` per line.
fn with_key(toml: &str, section: &str, key: &str, value: &str) -> String {
    // As the environment gives it: a number stays a number (figment parses `KAIROS_*` values).
    let literal = match value.parse::<i64>() {
        Ok(n) => n.to_string(),
        Err(_) => serde_json::to_string(value).unwrap(),
    };
    let line = format!("{key} = {literal}");
    let header = format!("[{section}]");
    let mut out = String::new();
    let mut current = String::new();
    let mut added = false;
    for l in toml.lines() {
        let t = l.trim();
        if t.starts_with('[') {
            if current == header && !added {
                out.push_str(&line);
                out.push('\n');
                added = true;
            }
            current = t.to_owned();
        } else if current == header && t.starts_with(&format!("{key} = ")) {
            continue;
        }
        out.push_str(l);
        out.push('\n');
    }
    if !added {
        if current != header {
            out.push_str(&format!("\n{header}\n"));
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// The image's environment, which a container's own variables override: the `ENV` lines of the
/// repository's Dockerfile, when there is one.
fn image_env() -> Vec<(String, String)> {
    let Ok(dockerfile) = std::fs::read_to_string(format!("{ROOT}/Dockerfile")) else {
        return vec![];
    };
    let joined = dockerfile.replace("\\\n", " ");
    joined
        .lines()
        .filter_map(|l| l.trim().strip_prefix("ENV "))
        .flat_map(|rest| rest.split_whitespace())
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
        .collect()
}

/// The ConfigMap's kairos.toml plus the `KAIROS_*` variables of each container is a
/// configuration Kairos accepts; the config file is the ConfigMap's, mounted where
/// `KAIROS_CONFIG` says; the files it names are on mounted volumes.
fn check_configuration(label: &str, render: &Render) {
    let registry = kairos::startup::registry();
    let clock = kairos_tests::fixture_clock();
    for (workload, pod) in render.pods() {
        let volumes: BTreeMap<&str, &Value> = arr(&pod["volumes"])
            .iter()
            .map(|v| (v["name"].as_str().unwrap(), v))
            .collect();
        for c in containers(pod) {
            let at = format!("{label}: {workload}");
            let mounts: Vec<(&str, &Value)> = arr(&c["volumeMounts"])
                .iter()
                .map(|m| {
                    (
                        m["mountPath"].as_str().unwrap(),
                        volumes[m["name"].as_str().unwrap()],
                    )
                })
                .collect();
            let env = arr(&c["env"]);
            let config_path = env
                .iter()
                .find(|e| e["name"] == "KAIROS_CONFIG")
                .and_then(|e| e["value"].as_str())
                .unwrap_or_else(|| panic!("{at}: no KAIROS_CONFIG"));
            let (dir, file) = config_path.rsplit_once('/').unwrap();
            let volume = mounts
                .iter()
                .find(|(path, _)| *path == dir)
                .unwrap_or_else(|| panic!("{at}: {config_path} is on no volume"))
                .1;
            let configmap = volume["configMap"]["name"].as_str().unwrap();
            let toml = render.named("ConfigMap", configmap)["data"][file]
                .as_str()
                .unwrap_or_else(|| panic!("{at}: ConfigMap {configmap} has no {file}"))
                .to_owned();

            // The files the configuration names, made where the container mounts them.
            let files = TempDir::new("files");
            let root = files.0.display().to_string();
            for line in toml.lines() {
                if let Some((key, value)) = line.split_once(" = ")
                    && key.trim().ends_with("_file")
                {
                    let path = value.trim().trim_matches('"');
                    let (dir, _) = path.rsplit_once('/').unwrap();
                    let mounted = mounts
                        .iter()
                        .any(|(m, v)| *m == dir && v["secret"]["secretName"].is_string());
                    assert!(mounted, "{at}: {key} {path} is on no Secret volume");
                    let local = format!("{root}{path}");
                    std::fs::create_dir_all(Path::new(&local).parent().unwrap()).unwrap();
                    std::fs::write(&local, "").unwrap();
                }
            }
            let toml = toml.replace("\"/etc/", &format!("\"{root}/etc/"));

            // The variables: literal values as they are ($(VAR) filled in), the others a
            // stand-in of the right form. NATS takes one way to sign in at a time.
            let mut effective: Vec<(String, String)> = image_env()
                .into_iter()
                .filter(|(k, _)| !env.iter().any(|e| e["name"] == k.as_str()))
                .collect();
            for e in env {
                let var = e["name"].as_str().unwrap();
                let value = match e["value"].as_str() {
                    Some(v) => v.replace("$(POSTGRESQL_PASSWORD)", "pw"),
                    None => {
                        assert!(
                            e["valueFrom"]["secretKeyRef"].is_object(),
                            "{at}: {var} neither a value nor from a Secret"
                        );
                        match var.starts_with("KAIROS_") {
                            true => {
                                let (section, key) = config_key(var);
                                stand_in(&section, &key).to_owned()
                            }
                            false => "stand-in".to_owned(),
                        }
                    }
                };
                effective.push((var.to_owned(), value));
            }
            let mut common = vec![];
            let mut ways: BTreeMap<&str, Vec<(String, String, String)>> = BTreeMap::new();
            for (var, value) in effective {
                if !var.starts_with("KAIROS_") || var == "KAIROS_CONFIG" {
                    continue;
                }
                let (section, key) = config_key(&var);
                let way = match (section.as_str(), key.as_str()) {
                    ("nats", "user" | "password") => Some("user"),
                    ("nats", "token") => Some("token"),
                    ("nats", "nkey_seed") => Some("nkey_seed"),
                    _ => None,
                };
                match way {
                    Some(w) => ways.entry(w).or_default().push((section, key, value)),
                    None => common.push((section, key, value)),
                }
            }
            let variants: Vec<Vec<(String, String, String)>> = if ways.is_empty() {
                vec![vec![]]
            } else {
                ways.into_values().collect()
            };
            for way in variants {
                let mut text = toml.clone();
                for (section, key, value) in common.iter().chain(&way) {
                    text = with_key(&text, section, key, value);
                }
                let settings = kairos::configuration::Settings::from_toml(&text)
                    .unwrap_or_else(|e| panic!("{at}: Kairos refuses\n{text}\n{e}"));
                if let Err(e) = kairos::startup::configure(&settings, &registry, &clock) {
                    panic!("{at}: Kairos refuses\n{text}\n{e}");
                }
                // The API listens where its probes and its Service look.
                if let Some(port) = arr(&c["ports"]).first() {
                    let listens = settings.http.addr.rsplit_once(':').unwrap().1;
                    assert_eq!(
                        listens,
                        port["containerPort"].to_string(),
                        "{at}: http.addr {}",
                        settings.http.addr
                    );
                }
            }
        }
    }
}

#[test]
fn kairos_accepts_the_configuration_every_container_gets() {
    check_configuration("default", &Render::of(Values::Default, &[]));
    check_configuration("production", &Render::of(Values::Production, &[]));
    check_configuration(
        "port 9090",
        &Render::of(Values::Default, &["--set", "api.port=9090"]),
    );
    // The values' config, with what Helm makes of numbers (every one a float) and of lists of
    // tables, and a client certificate for NATS.
    let tmp = TempDir::new("config");
    let file = tmp.0.join("config.yaml");
    std::fs::write(
        &file,
        r#"config:
  http:
    read_wait_ms: 2000
    max_connections: 20000
  database:
    max_connections: 20
  anomalies:
    limit_factor: 0.25
    cost_action: lower_limit
  budgets:
    timezone: Europe/Berlin
    preset:
      - project: checkout
        monthly_limit: "250.00"
        warn_at_percent: 75
        on_exceeded: fallback_to_local
        fallback_model: "llama3.1:8b"
      - project: research
        monthly_limit: "40"
        on_exceeded: block
  catalog:
    model:
      - name: "llama3.1:8b"
        provider: ollama
        context_window: 131072
        max_output_tokens: 8192
        local: true
        tier: 2
        tags: ["tools"]
      - name: gpt-4o-mini
        provider: openai
        context_window: 128000
        max_output_tokens: 16384
        tier: 3
        tags: []
        prices:
          - valid_from: "2025-06-01T00:00:00Z"
            input_per_mtok: "0.15"
            output_per_mtok: "0.60"
natsTls:
  secretName: nats-client-tls
  cert: tls.crt
  key: tls.key
natsAuth:
  credsSecret: kairos-nats-creds
"#,
    )
    .unwrap();
    let f = file.display().to_string();
    let render = Render::of(Values::Default, &["-f", &f]);
    let toml = config_toml(&render);
    assert!(toml.contains("max_connections = 20000\n"), "{toml}");
    assert!(toml.contains("[[budgets.preset]]"), "{toml}");
    assert!(toml.contains("[[catalog.model.prices]]"), "{toml}");
    check_configuration("config", &render);
    let settings =
        kairos::configuration::Settings::from_toml(&toml.replace("\"/etc/", "\"/nonexistent/etc/"));
    // Without the mounted files the NATS configuration is refused: the check above made them.
    assert!(
        settings.is_err_and(|e| e.to_string().contains("no file")),
        "the files are checked"
    );
}

// ---------------------------------------------------------------------------------------------
// Hooks, network policies, monitoring, dependencies.

#[test]
fn migrate_runs_as_a_hook_job_on_hook_resources() {
    for (label, render, hooks) in [
        (
            "default",
            Render::of(Values::Default, &[]),
            "pre-install,pre-upgrade",
        ),
        (
            "production",
            Render::of(Values::Production, &[]),
            "post-install,pre-upgrade",
        ),
    ] {
        let job = render.named("Job", "kairos-migrate");
        assert_eq!(annotation(job, "helm.sh/hook"), Some(hooks), "{label}");
        let weight: i64 = annotation(job, "helm.sh/hook-weight")
            .expect("a hook weight")
            .parse()
            .unwrap();
        let policy = annotation(job, "helm.sh/hook-delete-policy").expect("a delete policy");
        assert!(policy.contains("before-hook-creation"), "{label}: {policy}");
        let pod = &job["spec"]["template"]["spec"];
        assert_eq!(pod["containers"][0]["args"], serde_json::json!(["migrate"]));
        assert_eq!(pod["restartPolicy"], "Never");

        // What the Job uses exists when it runs: hooks of the same events, made before it.
        let mut used: Vec<(&str, &str)> = vec![];
        if let Some(sa) = pod["serviceAccountName"].as_str() {
            used.push(("ServiceAccount", sa));
        }
        for v in arr(&pod["volumes"]) {
            if let Some(cm) = v["configMap"]["name"].as_str() {
                used.push(("ConfigMap", cm));
            }
        }
        for e in arr(&pod["containers"][0]["env"]) {
            if let Some(s) = e["valueFrom"]["secretKeyRef"]["name"].as_str()
                && render.of_kind("Secret").any(|r| name(r) == s)
            {
                used.push(("Secret", s));
            }
        }
        assert!(used.iter().any(|(k, _)| *k == "ConfigMap"), "{label}");
        for (kind, n) in used {
            let r = render.named(kind, n);
            assert_eq!(
                annotation(r, "helm.sh/hook"),
                Some(hooks),
                "{label}: the Job's {kind} {n} is not a hook"
            );
            let w: i64 = annotation(r, "helm.sh/hook-weight")
                .unwrap()
                .parse()
                .unwrap();
            assert!(w < weight, "{label}: {kind} {n} weight {w} ≥ the Job's");
        }
    }
}

#[test]
fn network_policies_surround_every_pod() {
    for (label, render, nats_ports) in [
        ("default", Render::of(Values::Default, &[]), vec![4222]),
        (
            "external tls",
            Render::of(
                Values::Default,
                &[
                    "--set",
                    "externalNats.url=tls://nats-1.internal:4443\\,tls://nats-2.internal:4443",
                ],
            ),
            vec![4443],
        ),
        (
            "production",
            Render::of(Values::Production, &[]),
            vec![4222],
        ),
    ] {
        let policies: Vec<&Value> = render.of_kind("NetworkPolicy").collect();
        for (workload, _) in render.pods() {
            let workload_res = render
                .resources()
                .find(|r| format!("{} {}", r["kind"].as_str().unwrap(), name(r)) == workload)
                .unwrap();
            let pod_labels = obj_str(&workload_res["spec"]["template"]["metadata"]["labels"]);
            let selecting: Vec<&&Value> = policies
                .iter()
                .filter(|p| {
                    obj_str(&p["spec"]["podSelector"]["matchLabels"])
                        .iter()
                        .all(|(k, v)| pod_labels.get(k) == Some(v))
                })
                .collect();
            let types: BTreeSet<&str> = selecting
                .iter()
                .flat_map(|p| arr(&p["spec"]["policyTypes"]))
                .filter_map(Value::as_str)
                .collect();
            assert_eq!(
                types,
                ["Egress", "Ingress"].into(),
                "{label}: {workload} is not covered both ways"
            );
            let egress_ports: BTreeSet<(i64, &str)> = selecting
                .iter()
                .flat_map(|p| arr(&p["spec"]["egress"]))
                .flat_map(|rule| arr(&rule["ports"]))
                .map(|p| (p["port"].as_i64().unwrap(), p["protocol"].as_str().unwrap()))
                .collect();
            let mut expected: BTreeSet<(i64, &str)> =
                [(53, "UDP"), (53, "TCP"), (5432, "TCP")].into();
            expected.extend(nats_ports.iter().map(|p| (*p, "TCP")));
            assert_eq!(egress_ports, expected, "{label}: {workload} egress");
            let ingress: Vec<&Value> = selecting
                .iter()
                .flat_map(|p| arr(&p["spec"]["ingress"]))
                .collect();
            if pod_labels.get("app.kubernetes.io/component") == Some(&"api") {
                assert_eq!(ingress.len(), 1, "{label}: {workload}");
                assert_eq!(
                    arr(&ingress[0]["ports"])[0]["port"],
                    "http",
                    "{label}: the API port only"
                );
            } else {
                assert!(
                    ingress.is_empty(),
                    "{label}: {workload} accepts {ingress:?}"
                );
            }
        }
    }
}

#[test]
fn the_service_monitor_scrapes_metrics_with_a_key_from_a_secret() {
    let defaults = Render::of(Values::Default, &[]);
    assert_eq!(defaults.of_kind("ServiceMonitor").count(), 0);

    let production = Render::of(Values::Production, &[]);
    let sm = production.named("ServiceMonitor", "kairos");
    assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
    let svc = production.named("Service", "kairos");
    let selector = obj_str(&sm["spec"]["selector"]["matchLabels"]);
    let svc_labels = labels(svc);
    assert!(
        selector.iter().all(|(k, v)| svc_labels.get(k) == Some(v)),
        "the ServiceMonitor selects the API Service: {selector:?} vs {svc_labels:?}"
    );
    assert_eq!(
        arr(&sm["spec"]["namespaceSelector"]["matchNames"]),
        [Value::from(NAMESPACE)]
    );
    let endpoints = arr(&sm["spec"]["endpoints"]);
    assert_eq!(endpoints.len(), 1);
    let ep = &endpoints[0];
    assert_eq!(ep["path"], "/metrics");
    assert!(
        arr(&svc["spec"]["ports"])
            .iter()
            .any(|p| p["name"] == ep["port"]),
        "the Service has the port {}",
        ep["port"]
    );
    // /metrics needs an API key (read_projections): a Bearer token from a Secret.
    assert_eq!(ep["authorization"]["type"], "Bearer");
    assert_eq!(
        ep["authorization"]["credentials"],
        serde_json::json!({"name": "kairos-metrics-reader", "key": "key"})
    );
    assert!(ep["bearerTokenFile"].is_null() && ep["basicAuth"].is_null());
    assert_eq!(sm["metadata"]["labels"]["release"], "prometheus");

    let err = template(
        &chart_dir(),
        &["--set".into(), "serviceMonitor.enabled=true".into()],
    )
    .unwrap_err();
    assert!(
        err.contains("serviceMonitor.authorization.secretName"),
        "{err}"
    );
}

#[test]
fn the_dependencies_are_declared_off_and_stop_with_what_to_run() {
    let chart = yaml_file(&chart_dir().join("Chart.yaml"));
    let deps: BTreeMap<&str, (&str, &str)> = arr(&chart["dependencies"])
        .iter()
        .map(|d| {
            (
                d["name"].as_str().unwrap(),
                (
                    d["repository"].as_str().unwrap(),
                    d["condition"].as_str().unwrap(),
                ),
            )
        })
        .collect();
    assert_eq!(
        deps["nats"],
        ("https://nats-io.github.io/k8s/helm/charts/", "nats.enabled")
    );
    assert_eq!(deps["postgresql"].1, "postgresql.enabled");
    let values = yaml_file(&chart_dir().join("values.yaml"));
    assert_eq!(values["nats"]["enabled"], false);
    assert_eq!(values["postgresql"]["enabled"], false);
    let production = yaml_file(&chart_dir().join("values-production.yaml"));
    assert_eq!(production["nats"]["enabled"], true);
    assert_eq!(production["postgresql"]["enabled"], true);
    assert_eq!(production["nats"]["config"]["jetstream"]["enabled"], true);

    // charts/ holds the placeholders as packaged from helm/placeholders/ (its README says how).
    let out = Command::new(python())
        .arg("-c")
        .arg(
            r#"
import pathlib, sys, tarfile
import yaml
root = pathlib.Path(sys.argv[1])
# helm package writes Chart.yaml anew (without its comments): compared as YAML.
read = lambda name, data: yaml.safe_load(data) if name.endswith("Chart.yaml") else data
for dep in ("nats", "postgresql"):
    src = root / "placeholders" / dep
    with tarfile.open(root / "charts" / f"{dep}-0.0.0-placeholder.tgz") as tar:
        packed = {m.name: read(m.name, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()}
    sources = {n: read(n, p.read_bytes()) for p in src.rglob("*") if p.is_file()
               for n in [f"{dep}/{p.relative_to(src)}"]}
    if packed != sources:
        sys.exit(f"charts/{dep}-0.0.0-placeholder.tgz is not placeholders/{dep}: package it again")
"#,
        )
        .arg(chart_dir())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));

    // On the defaults the placeholders render nothing (the lint test passes); enabled, each
    // stops the render and says what to run.
    for dep in ["nats", "postgresql"] {
        let err = template(
            &chart_dir(),
            &["--set".into(), format!("{dep}.enabled=true")],
        )
        .unwrap_err();
        assert!(
            err.contains(&format!("{dep}.enabled is true"))
                && err.contains("helm dependency build"),
            "{err}"
        );
    }
}
