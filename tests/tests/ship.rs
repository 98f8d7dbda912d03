//! Keeps the shipping files honest: the `Dockerfile`, the GitHub workflows,
//! `docker-compose.prod.yml` and its Prometheus configuration. No NATS or PostgreSQL: it reads
//! files and runs linters.
//!
//! - **Dockerfile.** hadolint, failing on warnings. Its binary is in the virtualenv of
//!   `scripts/ops-requirements.txt`: the directory of `KAIROS_OPS_PYTHON`, else of what
//!   `scripts/pyenv.sh scripts/ops-requirements.txt` prints.
//! - **Workflows.** actionlint on every file of `.github/workflows/`, through
//!   `scripts/actionlint.sh` (`KAIROS_ACTIONLINT` names another script).
//! - **Compose file.** Read with that virtualenv's PyYAML (anchors and merge keys resolved), then
//!   held to its promises: known keys only; a health check on every service that is not a
//!   one-shot; no secret written into it (secret-like variables are `${VAR}` references, no URL
//!   carries a password, every variable is in `.env.example` and its secrets are empty there);
//!   the Kairos services run one image as a non-root user, after `migrate` has succeeded; one
//!   `consume` per module of `kairos::startup::registry()` beside `serve --no-projections`;
//!   every container read-only and without capabilities. (`docker compose config` is not run:
//!   these machines have no compose plugin, and a test that passes without it checks nothing.)
//! - **Prometheus.** `promtool check config` and `check rules` on `deploy/`, with the promtool of
//!   `KAIROS_PROMTOOL` (`make test` sets it) or of `scripts/promtool.sh`.
//!
//! Each check is also shown to fail: on a bad Dockerfile, a bad workflow, and on compose files
//! broken one promise at a time.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use kairos_tests::{read_repo, repo_root};
use serde_json::{Value, json};

const COMPOSE: &str = "docker-compose.prod.yml";
const ENV_EXAMPLE: &str = ".env.example";
/// The Kairos commands a compose service may run.
const KAIROS_COMMANDS: &[&str] = &["serve", "consume", "migrate"];

fn run(command: &mut Command) -> Output {
    command
        .current_dir(repo_root())
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"))
}

fn said(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A scratch directory of the test's own.
fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kairos-ship-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The Python of the deployment checkers' virtualenv.
fn ops_python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        if let Some(python) = std::env::var_os("KAIROS_OPS_PYTHON") {
            return PathBuf::from(python);
        }
        let out =
            run(Command::new(repo_root().join("scripts/pyenv.sh"))
                .arg("scripts/ops-requirements.txt"));
        assert!(
            out.status.success(),
            "scripts/pyenv.sh scripts/ops-requirements.txt failed:\n{}",
            said(&out)
        );
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    })
}

fn hadolint(dockerfile: &Path) -> Output {
    let bin = ops_python().parent().unwrap().join("hadolint");
    run(Command::new(&bin)
        .args(["--no-color", "--failure-threshold", "warning"])
        .arg(dockerfile))
}

#[test]
fn the_dockerfile_passes_hadolint() {
    let out = hadolint(&repo_root().join("Dockerfile"));
    assert!(out.status.success(), "hadolint Dockerfile:\n{}", said(&out));
}

/// The image runs `kairos` as a numeric non-root user (what Kubernetes' runAsNonRoot can check)
/// and exposes the port of kairos.toml's `http.addr`.
#[test]
fn the_image_runs_kairos_unprivileged_on_the_configured_port() {
    let dockerfile = read_repo("Dockerfile");
    let last = |instruction: &str| {
        dockerfile
            .lines()
            .filter_map(|l| l.strip_prefix(instruction))
            .next_back()
            .map(str::trim)
            .unwrap_or_else(|| panic!("the Dockerfile has no {instruction}"))
    };
    let user = last("USER ");
    let uid: u32 = user
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("USER {user} is not numeric"));
    assert_ne!(uid, 0, "USER {user} is root");
    assert_eq!(last("ENTRYPOINT "), r#"["kairos"]"#);
    assert!(
        dockerfile.contains("/usr/local/bin/kairos"),
        "the binary is not installed as /usr/local/bin/kairos"
    );
    let defaults = kairos::configuration::Settings::from_toml("").unwrap();
    let port = defaults.http.addr.rsplit(':').next().unwrap().to_owned();
    assert_eq!(exposed_port(&dockerfile), port, "EXPOSE and http.addr");
    assert!(
        dockerfile.contains(&format!("KAIROS_HTTP_ADDR=0.0.0.0:{port}")),
        "the image does not listen on every interface at port {port}"
    );
}

#[test]
fn hadolint_fails_on_a_warning() {
    let dir = scratch();
    let dockerfile = dir.join("Dockerfile");
    // An untagged base image (DL3006) and unpinned packages (DL3008) are warnings.
    std::fs::write(
        &dockerfile,
        "FROM debian\nRUN apt-get update && apt-get install -y --no-install-recommends curl \\\n    && rm -rf /var/lib/apt/lists/*\n",
    )
    .unwrap();
    let out = hadolint(&dockerfile);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        !out.status.success(),
        "hadolint passed a bad Dockerfile:\n{}",
        said(&out)
    );
    assert!(said(&out).contains("DL3006"), "{}", said(&out));
}

fn actionlint(files: &[PathBuf]) -> Output {
    let script = std::env::var_os("KAIROS_ACTIONLINT")
        .map_or_else(|| repo_root().join("scripts/actionlint.sh"), PathBuf::from);
    run(Command::new(script).args(files))
}

fn workflow_files() -> Vec<PathBuf> {
    let dir = repo_root().join(".github/workflows");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yml" || x == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_workflow_passes_actionlint() {
    let files = workflow_files();
    assert!(!files.is_empty(), "no workflow in .github/workflows");
    let out = actionlint(&files);
    assert!(out.status.success(), "actionlint:\n{}", said(&out));
}

#[test]
fn actionlint_reports_errors_with_their_position() {
    let dir = scratch();
    let file = dir.join("broken.yml");
    std::fs::write(
        &file,
        "on: push\njobs:\n  build:\n    runs-on: ubuntu-latest\n    needs: nowhere\n    steps:\n      - run: echo ${{ github.no_such_thing }}\n",
    )
    .unwrap();
    let out = actionlint(std::slice::from_ref(&file));
    std::fs::remove_dir_all(&dir).unwrap();
    let text = said(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    // FILE:LINE:COL: MESSAGE, for the missing job and for the unknown property.
    let prefix = format!("{}:", file.display());
    let errors: Vec<(u32, u32, &str)> = text
        .lines()
        .filter_map(|line| {
            let mut parts = line.strip_prefix(&prefix)?.splitn(3, ':');
            let line_no = parts.next()?.parse().ok()?;
            let column = parts.next()?.parse().ok()?;
            Some((line_no, column, parts.next()?))
        })
        .collect();
    assert!(
        errors.iter().any(|(_, _, m)| m.contains("\"nowhere\"")),
        "no positioned error about the missing job:\n{text}"
    );
    assert!(
        errors
            .iter()
            .any(|(l, _, m)| *l == 7 && m.contains("no_such_thing")),
        "no error on line 7 about the unknown property:\n{text}"
    );
}

/// A YAML file as JSON, anchors and merge keys resolved.
fn yaml(path: &Path) -> Value {
    let out = run(Command::new(ops_python())
        .args([
            "-c",
            "import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)",
        ])
        .arg(path));
    assert!(out.status.success(), "{}: {}", path.display(), said(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The keys of the Compose specification's top level and of a service.
const TOP_LEVEL_KEYS: &[&str] = &[
    "name", "services", "volumes", "networks", "secrets", "configs", "include",
];
const SERVICE_KEYS: &[&str] = &[
    "annotations",
    "attach",
    "build",
    "blkio_config",
    "cap_add",
    "cap_drop",
    "cgroup",
    "cgroup_parent",
    "command",
    "configs",
    "container_name",
    "cpu_count",
    "cpu_percent",
    "cpu_period",
    "cpu_quota",
    "cpu_rt_period",
    "cpu_rt_runtime",
    "cpu_shares",
    "cpus",
    "cpuset",
    "credential_spec",
    "depends_on",
    "deploy",
    "develop",
    "device_cgroup_rules",
    "devices",
    "dns",
    "dns_opt",
    "dns_search",
    "domainname",
    "entrypoint",
    "env_file",
    "environment",
    "expose",
    "extends",
    "external_links",
    "extra_hosts",
    "gpus",
    "group_add",
    "healthcheck",
    "hostname",
    "image",
    "init",
    "ipc",
    "isolation",
    "labels",
    "links",
    "logging",
    "mac_address",
    "mem_limit",
    "mem_reservation",
    "mem_swappiness",
    "memswap_limit",
    "network_mode",
    "networks",
    "oom_kill_disable",
    "oom_score_adj",
    "pid",
    "pids_limit",
    "platform",
    "ports",
    "post_start",
    "pre_stop",
    "privileged",
    "profiles",
    "pull_policy",
    "read_only",
    "restart",
    "runtime",
    "scale",
    "secrets",
    "security_opt",
    "shm_size",
    "stdin_open",
    "stop_grace_period",
    "stop_signal",
    "storage_opt",
    "sysctls",
    "tmpfs",
    "tty",
    "ulimits",
    "user",
    "userns_mode",
    "uts",
    "volumes",
    "volumes_from",
    "working_dir",
];

/// A command or entrypoint as a list of words.
fn words(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(a)) => a
            .iter()
            .map(|w| w.as_str().unwrap_or("").to_owned())
            .collect(),
        Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}

/// A service's environment as (name, value) pairs, from either form.
fn environment(service: &Value) -> Vec<(String, String)> {
    let scalar = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    match service.get("environment") {
        Some(Value::Object(m)) => m.iter().map(|(k, v)| (k.clone(), scalar(v))).collect(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (kv.to_owned(), String::new()),
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The services it depends on, with the condition of each.
fn depends_on(service: &Value) -> Vec<(String, String)> {
    match service.get("depends_on") {
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| {
                let cond = v
                    .get("condition")
                    .and_then(Value::as_str)
                    .unwrap_or("service_started");
                (k.clone(), cond.to_owned())
            })
            .collect(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(|k| (k.to_owned(), "service_started".to_owned()))
            .collect(),
        _ => Vec::new(),
    }
}

fn is_secret_name(name: &str) -> bool {
    let n = name.to_ascii_uppercase();
    ["PASSWORD", "SECRET", "TOKEN", "CREDENTIAL"]
        .iter()
        .any(|w| n.contains(w))
        || n.ends_with("KEY")
        || n.contains("_KEY_")
}

/// `${NAME}`, `${NAME?msg}`, `${NAME:?msg}`, or `${NAME:-}` / `${NAME-}` (an empty default): a
/// reference that brings no value of its own.
fn is_bare_reference(value: &str) -> bool {
    let Some(inner) = value.strip_prefix("${").and_then(|v| v.strip_suffix('}')) else {
        return false;
    };
    let name_end = inner
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(inner.len());
    let (name, rest) = inner.split_at(name_end);
    !name.is_empty()
        && (rest.is_empty()
            || rest.starts_with(":?")
            || rest.starts_with('?')
            || rest == ":-"
            || rest == "-")
}

/// Every `${NAME…}` a text refers to (`$${…}` is an escaped dollar, not a reference).
fn references(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(n) = text[i..].find("${") {
        let at = i + n;
        i = at + 2;
        if at > 0 && b[at - 1] == b'$' {
            continue;
        }
        let name: String = text[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            out.insert(name);
        }
    }
    out
}

/// A URL with a password in it (`scheme://user:password@host`).
fn has_password_in_url(s: &str) -> bool {
    s.split("://").skip(1).any(|rest| {
        let authority = rest.split(['/', '?', '#', ' ']).next().unwrap_or("");
        authority
            .rsplit_once('@')
            .is_some_and(|(userinfo, _)| userinfo.contains(':'))
    })
}

fn strings<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::String(s) => out.push(s),
        Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        Value::Object(m) => m.values().for_each(|x| strings(x, out)),
        _ => {}
    }
}

/// The variables `.env.example` sets, with their values.
fn env_example(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// The port the Dockerfile's image listens on (its `EXPOSE`).
fn exposed_port(dockerfile: &str) -> String {
    dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("EXPOSE "))
        .map(|p| p.trim().trim_end_matches("/tcp").to_owned())
        .expect("the Dockerfile EXPOSEs the API's port")
}

/// What is wrong with a compose file (parsed): one line per problem.
fn compose_problems(
    compose: &Value,
    env_example_text: &str,
    projections: &[&str],
    api_port: &str,
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut problem = |p: String| problems.push(p);
    let Some(top) = compose.as_object() else {
        return vec!["the file is not a mapping".into()];
    };
    for key in top.keys() {
        if !TOP_LEVEL_KEYS.contains(&key.as_str()) && !key.starts_with("x-") {
            problem(format!("unknown top-level key {key}"));
        }
    }
    let Some(services) = top.get("services").and_then(Value::as_object) else {
        return vec!["no services".into()];
    };

    // Keys, hardening, health checks, restart policies, bind mounts.
    let completed_by_others: BTreeSet<String> = services
        .values()
        .flat_map(depends_on)
        .filter(|(_, cond)| cond == "service_completed_successfully")
        .map(|(name, _)| name)
        .collect();
    for (name, s) in services {
        if let Some(m) = s.as_object() {
            for key in m.keys() {
                if !SERVICE_KEYS.contains(&key.as_str()) && !key.starts_with("x-") {
                    problem(format!("service {name}: unknown key {key}"));
                }
            }
        }
        if s.get("read_only") != Some(&json!(true)) {
            problem(format!("service {name}: not read_only"));
        }
        if !words(s.get("cap_drop")).iter().any(|c| c == "ALL") {
            problem(format!(
                "service {name}: does not drop every capability (cap_drop: [ALL])"
            ));
        }
        if !words(s.get("security_opt"))
            .iter()
            .any(|o| o.starts_with("no-new-privileges"))
        {
            problem(format!("service {name}: no security_opt no-new-privileges"));
        }
        let restart = s.get("restart").and_then(Value::as_str).unwrap_or("no");
        let one_shot = restart == "no" && completed_by_others.contains(name);
        let check = s.get("healthcheck");
        let test = words(check.and_then(|h| h.get("test")));
        let disabled = check.and_then(|h| h.get("disable")) == Some(&json!(true))
            || test.first().is_some_and(|t| t == "NONE");
        let checked = !disabled
            && test.first().is_some_and(|t| t == "CMD" || t == "CMD-SHELL")
            && test.len() > 1;
        if !checked && !one_shot {
            problem(format!(
                "service {name}: no health check, and not a one-shot (restart \"no\", awaited with service_completed_successfully)"
            ));
        }
        if !one_shot && restart == "no" {
            problem(format!(
                "service {name}: runs for good but has no restart policy"
            ));
        }
        for volume in words(s.get("volumes")) {
            let source = volume.split(':').next().unwrap_or("");
            if source.starts_with("./") && !repo_root().join(source).exists() {
                problem(format!(
                    "service {name}: mounts {source}, which does not exist"
                ));
            }
        }
        for (var, value) in environment(s) {
            if is_secret_name(&var) && !is_bare_reference(&value) {
                problem(format!(
                    "service {name}: {var} is written into the file: make it a ${{VAR}} reference to .env"
                ));
            }
        }
        if s.get("env_file").is_some() {
            problem(format!(
                "service {name}: env_file hands the container every variable of the file; name the ones it needs"
            ));
        }
    }
    let mut all = Vec::new();
    services.values().for_each(|s| strings(s, &mut all));
    for s in all {
        if has_password_in_url(s) {
            problem(format!("a URL carries a password: {s}"));
        }
    }

    // Every variable the file refers to is documented, and the example holds no secret.
    let example = env_example(env_example_text);
    let documented: BTreeSet<&str> = example.iter().map(|(k, _)| k.as_str()).collect();
    let mut everything = Vec::new();
    strings(compose, &mut everything);
    let referenced: BTreeSet<String> = everything.iter().flat_map(|s| references(s)).collect();
    for var in referenced {
        if !documented.contains(var.as_str()) {
            problem(format!("${{{var}}} is not in {ENV_EXAMPLE}"));
        }
    }
    for (var, value) in &example {
        if is_secret_name(var) && !value.is_empty() {
            problem(format!(
                "{ENV_EXAMPLE} gives {var} a value: leave secrets empty there"
            ));
        }
    }

    // The Kairos services: one image, non-root, migrate first, every projection consumed once.
    let kairos: Vec<(&String, &Value, Vec<String>)> = services
        .iter()
        .filter_map(|(n, s)| {
            let cmd = words(s.get("command"));
            let first = cmd.first()?;
            KAIROS_COMMANDS
                .contains(&first.as_str())
                .then_some((n, s, cmd))
        })
        .collect();
    let images: BTreeSet<String> = kairos
        .iter()
        .map(|(_, s, _)| {
            s.get("image")
                .and_then(Value::as_str)
                .unwrap_or("(none)")
                .to_owned()
        })
        .collect();
    if images.len() != 1 {
        problem(format!(
            "the kairos services run different images: {images:?}"
        ));
    }
    for (name, s, _) in &kairos {
        if s.get("build").is_some() {
            problem(format!(
                "service {name}: builds its own image instead of running the one pushed"
            ));
        }
        let user = s.get("user").and_then(Value::as_str).unwrap_or("");
        let uid = user.split(':').next().unwrap_or("");
        if uid.parse::<u32>().map_or(true, |u| u == 0) {
            problem(format!(
                "service {name}: user {user:?} is not a numeric non-root user"
            ));
        }
    }
    let migrates: Vec<&String> = kairos
        .iter()
        .filter(|(_, _, cmd)| cmd[0] == "migrate")
        .map(|(n, _, _)| *n)
        .collect();
    match migrates.as_slice() {
        [migrate] => {
            let migrate_deps: BTreeSet<String> = depends_on(&services[migrate.as_str()])
                .into_iter()
                .filter(|(_, cond)| cond == "service_healthy")
                .map(|(n, _)| n)
                .collect();
            for (name, s, _) in kairos.iter().filter(|(n, _, _)| n != migrate) {
                let deps = depends_on(s);
                if !deps
                    .iter()
                    .any(|(d, c)| d == *migrate && c == "service_completed_successfully")
                {
                    problem(format!(
                        "service {name}: does not wait for {migrate} to complete successfully"
                    ));
                }
                for (d, _) in deps.iter().filter(|(d, _)| d != *migrate) {
                    if !migrate_deps.contains(d) {
                        problem(format!(
                            "service {migrate}: does not wait for {d} to be healthy, which {name} needs"
                        ));
                    }
                }
            }
        }
        other => problem(format!("{} migrate services, not one", other.len())),
    }
    let consumed: Vec<&str> = kairos
        .iter()
        .filter(|(_, _, cmd)| cmd[0] == "consume")
        .map(|(_, _, cmd)| cmd.get(1).map_or("", String::as_str))
        .collect();
    let serves: Vec<&Vec<String>> = kairos
        .iter()
        .filter(|(_, _, cmd)| cmd[0] == "serve")
        .map(|(_, _, cmd)| cmd)
        .collect();
    if serves.is_empty() {
        problem("no serve service: nothing answers HTTP".into());
    }
    let split = serves
        .iter()
        .all(|c| c.iter().any(|w| w == "--no-projections"));
    if split {
        for p in projections {
            match consumed.iter().filter(|c| *c == p).count() {
                1 => {}
                0 => problem(format!(
                    "projection {p} runs nowhere: add a consume-{p} service"
                )),
                n => problem(format!("projection {p} is consumed by {n} services")),
            }
        }
        for c in &consumed {
            if !projections.contains(c) {
                problem(format!("consume {c}: not a registered projection"));
            }
        }
    } else if !consumed.is_empty() {
        problem(
            "a serve service runs every projection, and consume services run them again".into(),
        );
    }
    for (name, s, cmd) in &kairos {
        if cmd[0] != "serve" {
            continue;
        }
        let publishes = words(s.get("ports"))
            .iter()
            .any(|p| p.rsplit(':').next() == Some(api_port));
        if !publishes {
            problem(format!(
                "service {name}: does not publish the image's port {api_port}"
            ));
        }
    }
    problems
}

struct ComposeFixture {
    value: Value,
    env_example: String,
    projections: Vec<&'static str>,
    port: String,
}

impl ComposeFixture {
    fn load() -> Self {
        Self {
            value: yaml(&repo_root().join(COMPOSE)),
            env_example: read_repo(ENV_EXAMPLE),
            projections: kairos::startup::registry().names(),
            port: exposed_port(&read_repo("Dockerfile")),
        }
    }

    fn problems(&self) -> Vec<String> {
        self.problems_of(&self.value)
    }

    fn problems_of(&self, value: &Value) -> Vec<String> {
        compose_problems(value, &self.env_example, &self.projections, &self.port)
    }
}

#[test]
fn the_compose_file_keeps_its_promises() {
    let f = ComposeFixture::load();
    let problems = f.problems();
    assert!(problems.is_empty(), "{COMPOSE}:\n{}", problems.join("\n"));
}

/// Breaks the compose file one promise at a time: each check must say so.
#[test]
fn the_compose_checks_catch_each_broken_promise() {
    let f = ComposeFixture::load();
    type Edit = fn(&mut Value);
    let cases: &[(&str, Edit, &str)] = &[
        (
            "typo in a key",
            |c| {
                let api = c["services"]["api"].as_object_mut().unwrap();
                let check = api.remove("healthcheck").unwrap();
                api.insert("healtcheck".into(), check);
            },
            "unknown key healtcheck",
        ),
        (
            "no health check",
            |c| {
                c["services"]["consume-budgets"]
                    .as_object_mut()
                    .unwrap()
                    .remove("healthcheck");
            },
            "service consume-budgets: no health check",
        ),
        (
            "inline password",
            |c| {
                c["services"]["api"]["environment"]["KAIROS_NATS_PASSWORD"] =
                    json!("hunter2hunter2");
            },
            "KAIROS_NATS_PASSWORD is written into the file",
        ),
        (
            "a default that is a secret",
            |c| {
                c["services"]["api"]["environment"]["KAIROS_AUTH_KEY_SECRET"] =
                    json!("${KAIROS_AUTH_KEY_SECRET:-changeme}");
            },
            "KAIROS_AUTH_KEY_SECRET is written into the file",
        ),
        (
            "password in a URL",
            |c| {
                c["services"]["consume-audit"]["environment"]["KAIROS_DATABASE_URL"] =
                    json!("postgres://kairos:pw@postgres/kairos");
            },
            "a URL carries a password",
        ),
        (
            "another image",
            |c| {
                c["services"]["consume-router"]["image"] = json!("kairos:other");
            },
            "different images",
        ),
        (
            "root",
            |c| {
                c["services"]["api"]["user"] = json!("0:0");
            },
            "service api: user \"0:0\" is not a numeric non-root user",
        ),
        (
            "not after migrate",
            |c| {
                c["services"]["consume-access"]["depends_on"]
                    .as_object_mut()
                    .unwrap()
                    .remove("migrate");
            },
            "service consume-access: does not wait for migrate",
        ),
        (
            "migrate too early",
            |c| {
                c["services"]["migrate"]["depends_on"]
                    .as_object_mut()
                    .unwrap()
                    .remove("nats");
            },
            "service migrate: does not wait for nats to be healthy",
        ),
        (
            "a projection missing",
            |c| {
                c["services"]
                    .as_object_mut()
                    .unwrap()
                    .remove("consume-anomalies");
            },
            "projection anomalies runs nowhere",
        ),
        (
            "writable",
            |c| {
                c["services"]["postgres"]["read_only"] = json!(false);
            },
            "service postgres: not read_only",
        ),
        (
            "no restart policy",
            |c| {
                c["services"]["nats"]
                    .as_object_mut()
                    .unwrap()
                    .remove("restart");
            },
            "service nats: runs for good but has no restart policy",
        ),
        (
            "a missing config file",
            |c| {
                c["services"]["prometheus"]["volumes"][0] =
                    json!("./deploy/nowhere.yml:/etc/prometheus/prometheus.yml:ro");
            },
            "mounts ./deploy/nowhere.yml",
        ),
    ];
    for (what, edit, expected) in cases {
        let mut broken = f.value.clone();
        edit(&mut broken);
        let problems = f.problems_of(&broken);
        assert!(
            problems.iter().any(|p| p.contains(expected)),
            "{what}: expected a problem with {expected:?}, got {problems:#?}"
        );
    }

    // An undocumented variable; a secret given a value in the example.
    let mut broken = f.value.clone();
    broken["services"]["api"]["environment"]["KAIROS_LOG_FILTER"] =
        json!("${SURPRISE_VARIABLE:-info}");
    let problems = f.problems_of(&broken);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("${SURPRISE_VARIABLE} is not in")),
        "{problems:#?}"
    );
    let example = f
        .env_example
        .replace("\nPOSTGRES_PASSWORD=\n", "\nPOSTGRES_PASSWORD=hunter2\n");
    assert_ne!(
        example, f.env_example,
        "{ENV_EXAMPLE} sets POSTGRES_PASSWORD= on a line of its own"
    );
    let problems = compose_problems(&f.value, &example, &f.projections, &f.port);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("gives POSTGRES_PASSWORD a value")),
        "{problems:#?}"
    );
}

#[test]
fn prometheus_accepts_its_configuration() {
    // make test sets KAIROS_PROMTOOL; without it, the script that finds or fetches one.
    let promtool = match std::env::var("KAIROS_PROMTOOL") {
        Ok(p) if !p.is_empty() => p,
        _ => {
            let out = run(Command::new("bash").arg(repo_root().join("scripts/promtool.sh")));
            assert!(out.status.success(), "scripts/promtool.sh:\n{}", said(&out));
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        }
    };
    // --syntax-only: the scrape key's file exists only in the container.
    for args in [
        &["check", "config", "--syntax-only", "deploy/prometheus.yml"][..],
        &["check", "rules", "deploy/kairos-alerts.yml"][..],
    ] {
        let out = run(Command::new(&promtool).args(args));
        assert!(
            out.status.success(),
            "promtool {}:\n{}",
            args.join(" "),
            said(&out)
        );
    }
    // The file the compose service mounts the rules as is the one the configuration names.
    let config = yaml(&repo_root().join("deploy/prometheus.yml"));
    assert_eq!(config["rule_files"], json!(["kairos-alerts.yml"]));
}
