//! The gateway end to end over loopback: real payloads signed per provider, the real server, the SQLite
//! queue, the dispatcher, and a sink that receives the notifications; and the hyper glue around the
//! handler (routing, limits, reloads, HTTP/2, slow clients, timeouts). What the handler answers a
//! request it is handed is tested without a socket in `tests/handler.rs`.

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::watch;

use hookgate::dispatch::DispatchConfig;
use hookgate::ruleset::HmacAlgorithm;
use hookgate::server::ServerConfig;
use hookgate::signature::{base64, hmac, standard_webhooks_key};
use support::Sink;
use support::requests::{fixture, h, hex_mac, now, token_path};

const WAIT: Duration = Duration::from_secs(10);
const SW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A running gateway on loopback.
struct Gateway {
    hooks: String,
    admin: String,
    dir: tempfile::TempDir,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    client: reqwest::Client,
}

impl Gateway {
    /// Starts a gateway on `rules` (secrets come from files named after them in a temp dir).
    async fn start(rules: &str, secrets: &[(&str, &str)]) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        Gateway::start_in(dir, Path::new("rules.hook"), rules, secrets).await
    }

    async fn start_in(
        dir: tempfile::TempDir,
        rules_file: &Path,
        rules: &str,
        secrets: &[(&str, &str)],
    ) -> Gateway {
        let config = ServerConfig {
            dedup_window: Duration::from_secs(3600),
            ..ServerConfig::default()
        };
        Gateway::start_with(dir, rules_file, rules, secrets, config).await
    }

    async fn start_with(
        dir: tempfile::TempDir,
        rules_file: &Path,
        rules: &str,
        secrets: &[(&str, &str)],
        config: ServerConfig,
    ) -> Gateway {
        let mut text = String::new();
        for (name, value) in secrets {
            let path = dir.path().join(format!("secret-{name}"));
            std::fs::write(&path, value).unwrap();
            text.push_str(&format!("secret {name} = file(\"{}\")\n", path.display()));
        }
        text.push_str(rules);
        let path = dir.path().join(rules_file);
        if !path.exists() {
            std::fs::write(&path, text).unwrap();
        }
        let hooks = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (hooks_addr, admin_addr) = (hooks.local_addr().unwrap(), admin.local_addr().unwrap());
        let (stop, mut stopped) = watch::channel(false);
        // The real wiring and shutdown order, as `gateway serve` runs them.
        let config = hookgate::server::Config {
            rules: path,
            data: dir.path().join("data"),
            queue: None,
            queue_ca_file: None,
            server: config,
            dispatch: DispatchConfig {
                tick: Duration::from_millis(50),
                ..DispatchConfig::default()
            },
            log: Default::default(),
            admin_token: None,
            reload_debounce: Duration::from_millis(100),
        };
        let listeners = hookgate::server::Listeners { hooks, admin };
        let server = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            hookgate::server::run(config, listeners, shutdown, Default::default())
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        });
        let tasks = vec![server];
        Gateway {
            hooks: format!("http://{hooks_addr}"),
            admin: format!("http://{admin_addr}"),
            dir,
            stop,
            tasks,
            client: reqwest::Client::new(),
        }
    }

    async fn post(
        &self,
        path: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let mut request = self
            .client
            .post(format!("{}{path}", self.hooks))
            .body(body.to_vec());
        for (name, value) in headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.bytes().await.unwrap();
        (
            status,
            serde_json::from_slice(&body).unwrap_or(Value::Null),
            headers,
        )
    }

    async fn admin_get(&self, path: &str) -> (u16, String) {
        let response = self
            .client
            .get(format!("{}{path}", self.admin))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    async fn status(&self) -> Value {
        serde_json::from_str(&self.admin_get("/status").await.1).unwrap()
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(15), t).await;
        }
    }
}

/// A rule per source that notifies the sink with what the gateway made of the delivery.
fn every_provider_rules(sink: &Sink) -> String {
    let mut text = format!("target t {{ post \"{}\" retry 0 }}\n", sink.url("/notify"));
    for (name, kind, extra) in [
        ("github", "github", ""),
        ("gitlab", "gitlab", ""),
        ("gitlab_signed", "gitlab", ""),
        ("bitbucket", "bitbucket", ""),
        ("bitbucket_server", "bitbucket_server", ""),
        ("gitea", "gitea", ""),
        ("forgejo", "forgejo", ""),
        ("dockerhub", "dockerhub", ""),
        ("quay", "quay", ""),
        ("harbor", "harbor", ""),
        ("slack", "slack", ""),
        ("standard_webhooks", "standard_webhooks", ""),
        ("generic_hmac", "generic_hmac", ""),
        ("generic", "generic", "token header \"X-Token\""),
    ] {
        let secret = match name {
            "gitlab_signed" | "standard_webhooks" => "sw",
            _ => "k",
        };
        text.push_str(&format!(
            "source {name}: {kind} {{ secret {secret} {extra} }}\n"
        ));
        text.push_str(&format!(
            "rule \"{name}\" {{ from {name} notify t {{\"source\": source, \"event\": event, \"delivery\": delivery, \"size\": \"${{$..*}}\"}} }}\n"
        ));
    }
    // The templates above must not be too clever: `size` only proves the payload was parsed.
    text.replace(", \"size\": \"${$..*}\"", "")
}

#[tokio::test]
async fn every_provider_verifies_a_real_payload_and_its_notify_reaches_the_sink() {
    let sink = Sink::always(200).await;
    let gw = Gateway::start(
        &every_provider_rules(&sink),
        &[("k", "s3cret"), ("sw", SW_SECRET)],
    )
    .await;
    let k = "s3cret";
    let ts = now().to_string();

    type Signer = Box<dyn Fn(&[u8]) -> Vec<(String, String)>>;
    struct Case {
        path: String,
        fixture: &'static str,
        sign: Signer,
        /// Replaces the body sent (Gitea's form delivery).
        body: Option<Vec<u8>>,
        event: Value,
        delivery: Option<&'static str>,
    }
    let sw_sign = {
        let ts = ts.clone();
        move |body: &[u8]| {
            let key = standard_webhooks_key(SW_SECRET.as_bytes());
            let id = "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W";
            let mac = hmac(
                HmacAlgorithm::Sha256,
                &key,
                &[id.as_bytes(), b".", ts.as_bytes(), b".", body],
            );
            vec![
                h("webhook-id", id),
                h("webhook-timestamp", ts.clone()),
                h("webhook-signature", format!("v1,{}", base64(&mac))),
            ]
        }
    };
    let gitea_json = fixture("gitea/push-goplayground").0;
    let gitea_form = format!(
        "payload={}",
        form_urlencoded::byte_serialize(&gitea_json).collect::<String>()
    )
    .into_bytes();
    let cases = vec![
        Case {
            path: "/hook/github".into(),
            fixture: "github/push-branch-commits-argocd",
            sign: Box::new(move |b| {
                vec![h(
                    "X-Hub-Signature-256",
                    format!("sha256={}", hex_mac(HmacAlgorithm::Sha256, k, &[b])),
                )]
            }),
            body: None,
            event: json!("push"),
            delivery: Some("68546e73-b6a0-5291-8a8b-8cc3e03b09d2"),
        },
        Case {
            path: "/hook/gitlab".into(),
            fixture: "gitlab/push-goscm",
            sign: Box::new(move |_| vec![h("X-Gitlab-Token", k)]),
            body: None,
            event: json!("Push Hook"),
            delivery: Some("d5b101fc-1610-524c-a635-68901d526592"),
        },
        Case {
            path: "/hook/gitlab_signed".into(),
            fixture: "gitlab/merge_request-merged-goscm",
            sign: Box::new(sw_sign.clone()),
            body: None,
            event: json!("Merge Request Hook"),
            delivery: Some("0d2b7f10-959d-5892-8dcc-9d09c7015062"),
        },
        Case {
            path: "/hook/bitbucket".into(),
            fixture: "bitbucket-cloud/repo-push-goscm",
            sign: Box::new(move |b| {
                vec![h(
                    "X-Hub-Signature",
                    format!("sha256={}", hex_mac(HmacAlgorithm::Sha256, k, &[b])),
                )]
            }),
            body: None,
            event: json!("repo:push"),
            delivery: Some("c388aad4-aa9a-5421-8436-0566cf4fc4aa"),
        },
        Case {
            path: "/hook/bitbucket_server".into(),
            fixture: "bitbucket-server/repo-refs_changed-goscm",
            sign: Box::new(move |b| {
                vec![h(
                    "X-Hub-Signature",
                    format!("sha256={}", hex_mac(HmacAlgorithm::Sha256, k, &[b])),
                )]
            }),
            body: None,
            event: json!("repo:refs_changed"),
            delivery: Some("26f996d8-a7fc-5f24-a8b9-999d61d718ef"),
        },
        Case {
            path: "/hook/gitea".into(),
            fixture: "gitea/push-goplayground",
            sign: Box::new(move |_| {
                let json = fixture("gitea/push-goplayground").0;
                vec![
                    h(
                        "X-Gitea-Signature",
                        hex_mac(HmacAlgorithm::Sha256, k, &[&json]),
                    ),
                    h("Content-Type", "application/x-www-form-urlencoded"),
                ]
            }),
            body: Some(gitea_form),
            event: json!("push"),
            delivery: Some("3f4b4d12-5e27-5e5a-aea2-66f3e7c9964e"),
        },
        Case {
            path: "/hook/forgejo".into(),
            fixture: "gitea/push-forgejo-headers-goplayground",
            sign: Box::new(move |b| {
                vec![h(
                    "X-Forgejo-Signature",
                    hex_mac(HmacAlgorithm::Sha256, k, &[b]),
                )]
            }),
            body: None,
            event: json!("push"),
            delivery: Some("1e993ff9-4fe7-5b80-b938-8d07b9f806e5"),
        },
        Case {
            path: token_path(k, "dockerhub"),
            fixture: "dockerhub/push-argocd-pr28022",
            sign: Box::new(|_| vec![]),
            body: None,
            event: json!("push"),
            delivery: None,
        },
        Case {
            path: token_path(k, "quay"),
            fixture: "quay/repo_push",
            sign: Box::new(|_| vec![]),
            body: None,
            event: json!("repo_push"),
            delivery: None,
        },
        Case {
            path: "/hook/harbor".into(),
            fixture: "harbor/PUSH_ARTIFACT-cloudevents",
            sign: Box::new(move |_| vec![h("Authorization", k)]),
            body: None,
            event: json!("harbor.artifact.pushed"),
            delivery: Some("66e18103-09c1-41f6-982f-37df223f3eeb"),
        },
        Case {
            path: "/hook/slack".into(),
            fixture: "slack/event_callback-reaction_added",
            sign: {
                let ts = ts.clone();
                Box::new(move |b| {
                    let sig = hex_mac(
                        HmacAlgorithm::Sha256,
                        k,
                        &[format!("v0:{ts}:").as_bytes(), b],
                    );
                    vec![
                        h("X-Slack-Request-Timestamp", ts.clone()),
                        h("X-Slack-Signature", format!("v0={sig}")),
                    ]
                })
            },
            body: None,
            event: json!("reaction_added"),
            delivery: None,
        },
        Case {
            path: "/hook/standard_webhooks".into(),
            fixture: "standard-webhooks/example.event",
            sign: Box::new(sw_sign),
            body: None,
            event: json!("example.event"),
            delivery: Some("msg_2KWPBgLlAfxdpx2AI54pPJ85f4W"),
        },
        Case {
            path: "/hook/generic_hmac".into(),
            fixture: "github/release-published",
            sign: Box::new(move |b| {
                vec![h(
                    "X-Signature",
                    format!("sha512={}", hex_mac(HmacAlgorithm::Sha512, k, &[b])),
                )]
            }),
            body: None,
            event: Value::Null,
            delivery: None,
        },
        Case {
            path: "/hook/generic".into(),
            fixture: "github/ping-repository",
            sign: Box::new(move |_| vec![h("X-Token", k)]),
            body: None,
            event: Value::Null,
            delivery: None,
        },
    ];
    let n = cases.len();
    for case in &cases {
        let (json_body, mut headers) = fixture(case.fixture);
        let body = case.body.clone().unwrap_or(json_body);
        headers.retain(|(name, _)| {
            !(case.body.is_some() && name.eq_ignore_ascii_case("content-type"))
        });
        headers.extend((case.sign)(&body));
        let (status, answer, response_headers) = gw.post(&case.path, &headers, &body).await;
        assert_eq!(status, 202, "{}: {answer}", case.fixture);
        let source = case.path.trim_start_matches("/hook/");
        let source = if source.len() == 64 {
            case.fixture.split('/').next().unwrap()
        } else {
            source
        };
        assert_eq!(answer["matched"], json!([source]), "{}", case.fixture);
        assert_eq!(answer["actions"], json!(1));
        assert_eq!(response_headers["x-hookgate-matched"], "1");
        if let Some(d) = case.delivery {
            assert_eq!(answer["delivery"], json!(d), "{}", case.fixture);
        } else {
            assert!(
                answer["delivery"].as_str().unwrap().starts_with("hg-"),
                "{}: {answer}",
                case.fixture
            );
        }
    }
    assert!(
        sink.wait_for(n, WAIT).await,
        "only {} of {n} notifications arrived",
        sink.received().len()
    );
    let bodies: Vec<Value> = sink
        .received()
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    for case in &cases {
        let source = case.path.trim_start_matches("/hook/");
        let source = if source.len() == 64 {
            case.fixture.split('/').next().unwrap()
        } else {
            source
        };
        let body = bodies
            .iter()
            .find(|b| b["source"] == json!(source))
            .unwrap_or_else(|| panic!("no notify from {source}"));
        assert_eq!(body["event"], case.event, "{}", case.fixture);
        if let Some(d) = case.delivery {
            assert_eq!(body["delivery"], json!(d));
        }
    }
    gw.stop().await;
}

/// What the glue answers itself, before the handler (whose answers `tests/handler.rs` covers): routing,
/// methods, body limits, credentials checked before the body is read; and the admin endpoints and
/// request metrics it serves.
#[tokio::test]
async fn status_codes_the_glue_answers() {
    let sink = Sink::always(200).await;
    let rules = format!(
        "source acme: github {{ secret k max_body 1KiB }}\nsource hub: dockerhub {{ secret k }}\n\
         source limited: generic {{ secret k token header \"X-Token\" rate 2 per 1m }}\n\
         target t {{ post \"{}\" }}\nrule \"r\" {{ from * notify t }}\n",
        sink.url("/")
    );
    let gw = Gateway::start(&rules, &[("k", "s")]).await;
    let sign = |body: &[u8]| {
        vec![
            h(
                "X-Hub-Signature-256",
                format!("sha256={}", hex_mac(HmacAlgorithm::Sha256, "s", &[body])),
            ),
            h("X-GitHub-Event", "push"),
        ]
    };
    assert_eq!(gw.post("/hook/nope", &[], b"{}").await.0, 404);
    assert_eq!(
        gw.post(&token_path("wrong", "hub"), &[], b"{}").await.0,
        404,
        "a wrong URL token looks like no source"
    );
    let (push, _) = fixture("dockerhub/push-argocd-pr28022");
    assert_eq!(gw.post(&token_path("s", "hub"), &[], &push).await.0, 202);
    let get = gw
        .client
        .get(format!("{}/hook/acme", gw.hooks))
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 405);
    assert_eq!(get.headers()["allow"], "POST");
    let big = vec![b' '; 2048];
    assert_eq!(
        gw.post("/hook/acme", &sign(&big), &big).await.0,
        413,
        "over the source's max_body"
    );
    // A missing or malformed signature is refused from the headers, and counted like any other.
    for (what, headers) in [
        ("missing", vec![h("X-GitHub-Event", "push")]),
        ("malformed", vec![h("X-Hub-Signature-256", "sha1=abc")]),
    ] {
        let (status, answer, _) = gw.post("/hook/acme", &headers, b"{}").await;
        assert_eq!(
            (status, answer),
            (401, json!({"error": "unauthorized"})),
            "{what}"
        );
    }
    let token = [h("X-Token", "s")];
    assert_eq!(gw.post("/hook/limited", &token, b"{}").await.0, 202);
    assert_eq!(gw.post("/hook/limited", &token, b"{}").await.0, 202);
    let (status, _, headers) = gw.post("/hook/limited", &token, b"{}").await;
    assert_eq!(status, 429);
    assert!(headers.contains_key("retry-after"));
    // Admin endpoints.
    assert_eq!(gw.admin_get("/healthz").await, (200, "ok\n".into()));
    assert_eq!(gw.admin_get("/readyz").await.0, 200);
    let metrics = gw.admin_get("/metrics").await.1;
    for line in [
        "hookgate_requests_total{source=\"limited\",status=\"429\"} 1",
        "hookgate_requests_total{source=\"acme\",status=\"401\"} 2",
        "hookgate_requests_total{source=\"acme\",status=\"413\"} 1",
        "hookgate_verification_failures_total{reason=\"missing\",source=\"acme\"} 1",
        "hookgate_verification_failures_total{reason=\"malformed\",source=\"acme\"} 1",
        "hookgate_config_generation 1",
        "hookgate_queue_jobs{state=\"pending\"}",
    ] {
        assert!(metrics.contains(line), "{line}\n{metrics}");
    }
    // The three accepted requests each ran `notify t`, which has no body: the original bytes are sent.
    assert!(sink.wait_for(3, WAIT).await);
    assert!(
        sink.received().iter().any(|r| r.body == push),
        "notify without a body sends the original bytes"
    );
    gw.stop().await;
}

/// Lays out `dir` as the kubelet mounts a ConfigMap: `rules.hook -> ..data/rules.hook`,
/// `..data -> ..<version>`, and swaps `..data` atomically to a new version.
fn configmap_write(dir: &Path, version: u32, contents: &str) {
    let versioned = dir.join(format!("..2026_11_22_{version:02}"));
    std::fs::create_dir_all(&versioned).unwrap();
    std::fs::write(versioned.join("rules.hook"), contents).unwrap();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(versioned.file_name().unwrap(), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    if !dir.join("rules.hook").exists() {
        std::os::unix::fs::symlink("..data/rules.hook", dir.join("rules.hook")).unwrap();
    }
}

async fn wait_generation(gw: &Gateway, generation: u64) -> Value {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let status = gw.status().await;
        if status["rules"]["generation"] == json!(generation)
            || std::time::Instant::now() > deadline
        {
            assert_eq!(status["rules"]["generation"], json!(generation), "{status}");
            return status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn configmap_swaps_reload_and_broken_files_keep_the_old_rules() {
    let sink = Sink::always(200).await;
    let dir = tempfile::tempdir().unwrap();
    let secret_path = dir.path().join("token");
    std::fs::write(&secret_path, "tok").unwrap();
    let rules = |sources: &[&str]| -> String {
        let mut t = format!(
            "secret k = file(\"{}\")\ntarget t {{ post \"{}\" }}\n",
            secret_path.display(),
            sink.url("/")
        );
        for s in sources {
            t.push_str(&format!("source {s}: generic {{ secret k token header \"X-Token\" }}\nrule \"{s}\" {{ from {s} notify t }}\n"));
        }
        t
    };
    let mount = dir.path().join("config");
    std::fs::create_dir_all(&mount).unwrap();
    configmap_write(&mount, 1, &rules(&["a"]));
    let gw = Gateway::start_in(dir, Path::new("config/rules.hook"), "", &[]).await;
    let token = [h("X-Token", "tok")];
    assert_eq!(gw.post("/hook/a", &token, b"{}").await.0, 202);
    assert_eq!(gw.post("/hook/b", &token, b"{}").await.0, 404);

    configmap_write(&gw.dir.path().join("config"), 2, &rules(&["a", "b"]));
    wait_generation(&gw, 2).await;
    assert_eq!(
        gw.post("/hook/b", &token, b"{}").await.0,
        202,
        "the first swap is live"
    );

    configmap_write(&gw.dir.path().join("config"), 3, &rules(&["b", "c"]));
    let status = wait_generation(&gw, 3).await;
    assert_eq!(
        gw.post("/hook/c", &token, b"{}").await.0,
        202,
        "the second swap is live"
    );
    assert_eq!(gw.post("/hook/a", &token, b"{}").await.0, 404);
    assert_eq!(status["rules"]["last_error"], Value::Null);

    // A broken version: the old rules keep serving, /status and the metrics say why.
    configmap_write(&gw.dir.path().join("config"), 4, "source c: generic {");
    let deadline = std::time::Instant::now() + WAIT;
    let status = loop {
        let status = gw.status().await;
        if !status["rules"]["last_error"].is_null() || std::time::Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let error = status["rules"]["last_error"]
        .as_str()
        .expect("the failure is reported");
    assert!(error.contains("rules::syntax"), "{error}");
    assert_eq!(
        status["rules"]["generation"],
        json!(3),
        "nothing was swapped"
    );
    assert_eq!(
        gw.post("/hook/c", &token, b"{}").await.0,
        202,
        "the previous rules still serve"
    );
    let metrics = gw.admin_get("/metrics").await.1;
    assert!(
        metrics.contains("hookgate_reloads_total{result=\"failure\"}"),
        "{metrics}"
    );
    assert!(!error.contains("tok\""), "no secret in /status");

    // Rotating the secret file is a change too, even with the same rules text.
    configmap_write(&gw.dir.path().join("config"), 5, &rules(&["c"]));
    wait_generation(&gw, 4).await;
    std::fs::write(&secret_path, "tok2").unwrap();
    wait_generation(&gw, 5).await;
    assert_eq!(
        gw.post("/hook/c", &token, b"{}").await.0,
        401,
        "the old token no longer verifies"
    );
    assert_eq!(
        gw.post("/hook/c", &[h("X-Token", "tok2")], b"{}").await.0,
        202
    );

    // POST /-/reload with nothing changed.
    let reload = gw
        .client
        .post(format!("{}/-/reload", gw.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(reload.status(), 200);
    let answer: Value = serde_json::from_str(&reload.text().await.unwrap()).unwrap();
    assert_eq!(answer, json!({"result": "unchanged"}));
    gw.stop().await;
}

#[tokio::test]
async fn http2_slow_clients_and_timeouts() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sink = Sink::always(200).await;
    let rules = format!(
        "source acme: generic {{ secret k token header \"X-Token\" }}\ntarget t {{ post \"{}\" }}\nrule \"r\" {{ from acme notify t }}\n",
        sink.url("/")
    );
    let config = ServerConfig {
        header_timeout: Duration::from_millis(300),
        request_timeout: Duration::from_millis(500),
        ..ServerConfig::default()
    };
    let gw = Gateway::start_with(
        tempfile::tempdir().unwrap(),
        Path::new("rules.hook"),
        &rules,
        &[("k", "s")],
        config,
    )
    .await;

    // HTTP/2 with prior knowledge (h2c) is served like HTTP/1.1.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let response = h2
        .post(format!("{}/hook/acme", gw.hooks))
        .header("X-Token", "s")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(
        (response.version(), response.status().as_u16()),
        (reqwest::Version::HTTP_2, 202)
    );

    let addr = gw.hooks.trim_start_matches("http://").to_string();
    // Headers that never finish: the connection is closed after the header timeout.
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"POST /hook/acme HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buf))
        .await
        .expect("closed, not left open");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "closed after {:?}",
        started.elapsed()
    );

    // A body that never finishes: 408 after the request timeout.
    let mut stuck = tokio::net::TcpStream::connect(&addr).await.unwrap();
    stuck
        .write_all(b"POST /hook/acme HTTP/1.1\r\nHost: x\r\nX-Token: s\r\nContent-Length: 100\r\n\r\n{\"partial\":")
        .await
        .unwrap();
    let mut answer = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), stuck.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    gw.stop().await;
}
