//! TLS from the gateway to PostgreSQL, against a real server started with `ssl = on`, a certificate
//! signed by a CA made here, and a `pg_hba.conf` that takes TCP connections only over TLS with a
//! password (`support::pg::PgServer::start_tls`):
//!
//! - with the CA given (`--queue-ca-file`), the queue opens over TLS (`sslmode=require`, and the default
//!   `prefer`), accepts and claims; and `gateway serve` answers a signed delivery 202;
//! - without it, or for a host name the certificate does not name, opening fails with an error that
//!   says what is wrong with the certificate and how to fix it, and never shows the URL's password;
//! - `sslmode=disable` against the TLS-only server, and `sslmode=require` against a server without TLS,
//!   fail with a clear error;
//! - a CA file that is missing, a directory, or holds no certificate is refused before connecting.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use hookgate::queue::postgres::Options;
use hookgate::queue::{Accepted, ClaimLimits, JobKind, Queue, QueueBackend, Settle};
use hookgate::ruleset::HmacAlgorithm;
use hookgate::signature::hmac;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use support::pg::{PgServer, Tls};
use support::serve::Serve;
use support::{Reply, Sink, job};

/// The `hookgate` user's password on the TLS server; no error may show it.
const PASSWORD: &str = "tls-Pa55word-never-shown";
const MINUTE: Duration = Duration::from_secs(60);

/// The TLS server of this test binary, and the files of its CA.
struct Fixture {
    server: PgServer,
    /// The CA that signed the server's certificate (PEM).
    ca_file: PathBuf,
    /// Another CA, which signed nothing the server shows.
    other_ca_file: PathBuf,
    _dir: tempfile::TempDir,
}

/// A CA: its issuer (to sign with) and its certificate's PEM.
fn ca(name: &str) -> (CertifiedIssuer<'static, KeyPair>, String) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let pem = issuer.pem();
    (issuer, pem)
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let (issuer, ca_pem) = ca("hookgate test CA");
        let (_, other_pem) = ca("some other CA");
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "hookgate test PostgreSQL");
        let cert = params.signed_by(&key, &issuer).unwrap();
        let server = PgServer::start_tls(&Tls {
            cert_pem: &cert.pem(),
            key_pem: &key.serialize_pem(),
            password: PASSWORD,
        });
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.crt");
        std::fs::write(&ca_file, ca_pem).unwrap();
        let other_ca_file = dir.path().join("other-ca.crt");
        std::fs::write(&other_ca_file, other_pem).unwrap();
        Fixture {
            server,
            ca_file,
            other_ca_file,
            _dir: dir,
        }
    })
}

fn with_ca(path: &Path) -> Options {
    Options {
        ca_file: Some(path.to_path_buf()),
    }
}

/// `url` with `params` added to its query.
fn with_params(url: &str, params: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{params}")
}

/// Asserts that `message` says each of `parts`.
fn says(message: &str, parts: &[&str]) {
    for part in parts {
        assert!(message.contains(part), "no {part:?} in: {message}");
    }
}

/// Opening `url` fails; its message.
async fn open_error(url: &str, options: &Options) -> String {
    match Queue::open_with(url, options).await {
        Ok(_) => panic!("the queue opened: {url}"),
        Err(e) => {
            let message = e.to_string();
            assert!(
                !message.contains(PASSWORD),
                "the error shows the password: {message}"
            );
            message
        }
    }
}

/// Whether the server sees `hookgate` connections (the queue's pool) and all of them use TLS.
fn hookgate_connections_use_tls(server: &PgServer, url: &str) -> bool {
    let answer = server.psql(
        url,
        "SELECT count(*) FILTER (WHERE s.ssl), count(*) FROM pg_stat_activity a \
         JOIN pg_stat_ssl s USING (pid) WHERE a.application_name = 'hookgate'",
    );
    let (tls, all) = answer.split_once('|').unwrap();
    all != "0" && tls == all
}

#[tokio::test]
async fn with_the_ca_file_the_queue_opens_over_tls_accepts_and_claims() {
    let f = fixture();
    for mode in ["sslmode=require", "sslmode=prefer"] {
        let url = with_params(&f.server.database(), mode);
        let q = Queue::open_with(&url, &with_ca(&f.ca_file))
            .await
            .unwrap_or_else(|e| panic!("{mode}: {e}"));
        assert!(!q.describe().contains(PASSWORD), "{}", q.describe());
        let accepted = q
            .accept(
                Some(("acme".into(), "delivery-1".into())),
                MINUTE,
                vec![job(JobKind::Notify, "t", None)],
            )
            .await
            .unwrap();
        let Accepted::Enqueued(ids) = accepted else {
            panic!("{mode}: a new delivery is not a duplicate")
        };
        assert_eq!(ids.len(), 1);
        let again = q
            .accept(
                Some(("acme".into(), "delivery-1".into())),
                MINUTE,
                vec![job(JobKind::Notify, "t", None)],
            )
            .await
            .unwrap();
        assert!(
            matches!(again, Accepted::Duplicate),
            "{mode}: the same delivery again is a duplicate"
        );
        let limits = ClaimLimits {
            concurrency: 4,
            rate: None,
        };
        let claimed = q.claim("t", limits, 10, MINUTE).await.unwrap();
        assert_eq!(claimed.iter().map(|j| j.id).collect::<Vec<_>>(), ids);
        q.settle(claimed[0].lease(), None, Settle::Ack)
            .await
            .unwrap();
        assert_eq!(q.stats().await.unwrap().done, 1);
        assert!(
            hookgate_connections_use_tls(&f.server, &url),
            "{mode}: the queue's connections are not TLS"
        );
    }
}

#[tokio::test]
async fn without_the_ca_the_certificate_is_refused_and_the_password_never_shown() {
    let f = fixture();
    let db = f.server.database();
    // No CA file, or one of a CA that signed nothing here: the issuer is unknown, with `require` and
    // with the default `prefer` alike (a certificate that fails verification is never used, and
    // never a reason to fall back to plain TCP).
    for (url, options) in [
        (with_params(&db, "sslmode=require"), Options::default()),
        (db.clone(), Options::default()),
        (
            with_params(&db, "sslmode=require"),
            with_ca(&f.other_ca_file),
        ),
    ] {
        let message = open_error(&url, &options).await;
        // Which server, too.
        says(
            &message,
            &["TLS certificate is not signed by a trusted CA", "127.0.0.1"],
        );
        let help = match &options.ca_file {
            None => "\nhelp: give the CA certificate that signed PostgreSQL's certificate (a PEM file) with `--queue-ca-file PATH`".to_string(),
            Some(path) => format!(
                "\nhelp: the CA file `{}` does not hold the CA that signed PostgreSQL's certificate",
                path.display()
            ),
        };
        says(&message, &[&help]);
    }
}

#[tokio::test]
async fn a_host_name_the_certificate_does_not_name_is_refused() {
    let f = fixture();
    // Connect to 127.0.0.1, but as `pg.invalid`, which the certificate does not name.
    let url = f.server.database().replace("@127.0.0.1:", "@pg.invalid:");
    let url = with_params(&url, "hostaddr=127.0.0.1&sslmode=require");
    let message = open_error(&url, &with_ca(&f.ca_file)).await;
    says(
        &message,
        &[
            "TLS certificate is not valid for `pg.invalid` (it names `localhost`, `127.0.0.1`)",
            "help: connect with a host name",
        ],
    );
}

#[tokio::test]
async fn sslmode_disable_against_a_tls_only_server_says_so() {
    let f = fixture();
    let url = with_params(&f.server.database(), "sslmode=disable");
    let message = open_error(&url, &with_ca(&f.ca_file)).await;
    says(
        &message,
        &[
            "no encryption",
            "help: PostgreSQL takes this connection only over TLS: remove `sslmode=disable`",
        ],
    );
}

#[tokio::test]
async fn sslmode_require_against_a_server_without_tls_says_so() {
    let url = with_params(&support::pg::shared().database(), "sslmode=require");
    let message = open_error(&url, &Options::default()).await;
    says(
        &message,
        &[
            "PostgreSQL does not offer TLS, and the URL says `sslmode=require`",
            "help: turn TLS on in PostgreSQL",
        ],
    );
}

#[tokio::test]
async fn the_default_prefer_still_connects_to_a_server_without_tls() {
    let url = support::pg::shared().database();
    let q = Queue::open_with(&url, &Options::default()).await.unwrap();
    q.enqueue(vec![job(JobKind::Notify, "t", None)])
        .await
        .unwrap();
    assert_eq!(q.stats().await.unwrap().pending, 1);
}

#[tokio::test]
async fn a_bad_ca_file_is_refused_before_connecting() {
    let f = fixture();
    let url = f.server.database();
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.crt");
    let empty = dir.path().join("empty.crt");
    std::fs::write(&empty, "no certificate here\n").unwrap();
    let key_only = dir.path().join("key.pem");
    std::fs::write(&key_only, KeyPair::generate().unwrap().serialize_pem()).unwrap();
    let truncated = dir.path().join("truncated.crt");
    let ca = std::fs::read_to_string(&f.ca_file).unwrap();
    std::fs::write(&truncated, &ca[..ca.len() / 2]).unwrap();
    for (path, problem) in [
        (&missing, "cannot be read: no such file or directory"),
        (
            &dir.path().to_path_buf(),
            "cannot be read: not a regular file (a directory)",
        ),
        (&empty, "holds no certificate"),
        (&key_only, "holds no certificate"),
        (&truncated, "is not valid PEM"),
    ] {
        let message = open_error(&url, &with_ca(path)).await;
        let expected = format!("the CA file `{}` {problem}", path.display());
        says(
            &message,
            &[&expected, "\nhelp: `--queue-ca-file` names a PEM file"],
        );
    }
}

#[tokio::test]
async fn libpq_only_url_options_get_a_pointed_help() {
    let f = fixture();
    let db = f.server.database();
    let message = open_error(
        &with_params(&db, "sslmode=require&sslrootcert=/etc/ca.crt"),
        &Options::default(),
    )
    .await;
    says(
        &message,
        &[
            "unknown option `sslrootcert`",
            "help: give the CA certificate with `--queue-ca-file PATH`",
        ],
    );
    let message = open_error(
        &with_params(&db, "sslmode=verify-full"),
        &Options::default(),
    )
    .await;
    says(
        &message,
        &[
            "invalid value for option `sslmode`",
            "`sslmode` takes `disable`, `prefer` (the default) or `require`",
        ],
    );
}

/// `gateway serve` over TLS: a signed delivery is answered 202 and delivered; without the CA it does
/// not start, and says why without showing the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_serve_runs_on_a_tls_queue_and_explains_a_refused_certificate() {
    let f = fixture();
    let url = with_params(&f.server.database(), "sslmode=require");
    let sink = Sink::start(|_, _| Reply::status(200)).await;
    let dir = tempfile::tempdir().unwrap();
    let secret = "tls-secret";
    std::fs::write(dir.path().join("secret"), secret).unwrap();
    let rules = dir.path().join("rules.hook");
    std::fs::write(
        &rules,
        format!(
            "secret gh = file(\"{}\")\nsource acme: github {{ secret gh }}\n\
             target t {{ post \"{}\" }}\nrule \"push\" {{ from acme on \"push\" notify t }}\n",
            dir.path().join("secret").display(),
            sink.url("/deliver"),
        ),
    )
    .unwrap();

    let ca = f.ca_file.display().to_string();
    let serve = Serve::start(
        &rules,
        &dir.path().join("data"),
        &["--queue", &url],
        &[("HOOKGATE_QUEUE_CA_FILE", &ca)],
    );
    let body = br#"{"ref":"refs/heads/main","repository":{"full_name":"acme/app"}}"#.to_vec();
    let signature = format!(
        "sha256={}",
        hex::encode(hmac(HmacAlgorithm::Sha256, secret.as_bytes(), &[&body]))
    );
    let response = reqwest::Client::new()
        .post(serve.hook_url("/hook/acme"))
        .header("content-type", "application/json")
        .header("x-github-event", "push")
        .header("x-github-delivery", "tls-delivery-1")
        .header("x-hub-signature-256", signature)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    assert!(
        sink.wait_for(1, Duration::from_secs(30)).await,
        "the delivery did not reach the sink"
    );
    assert_eq!(sink.received()[0].path, "/deliver");
    let (code, logs) = serve.stop();
    assert_eq!(code, Some(0), "{}", logs.join("\n"));
    assert!(!logs.join("\n").contains(PASSWORD));

    // Without the CA: it does not start, and stderr says why.
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["serve", "--rules"])
        .arg(&rules)
        .arg("--data")
        .arg(dir.path().join("data2"))
        .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .args(["--queue", &url])
        .env_remove("HOOKGATE_QUEUE_CA_FILE")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("error: queue storage error: cannot connect to postgres 127.0.0.1:"),
        "{stderr}"
    );
    assert!(
        stderr.contains("TLS certificate is not signed by a trusted CA"),
        "{stderr}"
    );
    assert!(stderr.contains("help: give the CA certificate"), "{stderr}");
    assert!(!stderr.contains(PASSWORD), "{stderr}");

    // `--queue-ca-file` without `--queue` is a mistake, said before anything starts.
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["serve", "--rules"])
        .arg(&rules)
        .arg("--data")
        .arg(dir.path().join("data3"))
        .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .args(["--queue-ca-file", &ca])
        .env_remove("HOOKGATE_QUEUE")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("error: `--queue-ca-file` is for a PostgreSQL queue"),
        "{stderr}"
    );
}
