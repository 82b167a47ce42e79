//! The dashboard in a real browser: headless Chromium driven over WebDriver (chromedriver) by
//! fantoccini, against a host on the real Redis and NATS. Each test saves screenshots of the
//! pages it visits under `target/ui-screens/`.
//!
//! The browser is not optional: without `chromedriver` (Debian: `apt-get install -y chromium
//! chromium-driver`, which `.ci/run` does when they are missing) these tests fail, saying so.

mod common;

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use common::{Api, Backend, Host, options, unique};
use coretex::worker::Mode;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

const ADMIN_KEY: &str = "ui-admin-key";
const ACME_KEY: &str = "ui-acme-key";
const BETA_KEY: &str = "ui-beta-key";
const WAIT: Duration = Duration::from_secs(20);

/// One browser at a time: each is a Chromium with its renderers, and the machine has few cores.
static BROWSER: Mutex<()> = Mutex::new(());

/// A host with keys (admin, tenants `acme` and `beta`) and its dashboard on a port of its own.
async fn host(demo_workers: bool) -> (Host, Api, String) {
    let mut o = options(Backend::Real);
    o.api_key = Some(ADMIN_KEY.into());
    o.tenant_keys = vec![
        ("acme".into(), ACME_KEY.into()),
        ("beta".into(), BETA_KEY.into()),
    ];
    o.ui_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    o.demo_workers = demo_workers;
    let mut h = Host::start_with(o).await;
    // The host's own helpers (waiting for workers) need the admin key too.
    h.api = Api::with_key(h.running.addr, ADMIN_KEY);
    let api = Api::with_key(h.running.addr, ADMIN_KEY);
    let ui = format!(
        "http://{}",
        h.running.ui_addr.expect("the dashboard listens")
    );
    (h, api, ui)
}

/// chromedriver and the session it drives; both end when this is dropped.
struct Browser {
    driver: Child,
    c: Client,
}

impl Drop for Browser {
    /// The whole process group: chromedriver and the Chromium it started, which a test that
    /// fails before closing its session would otherwise leave running.
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.driver.id()) {
            // SAFETY: a plain syscall on the group this test started (its leader is the driver).
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

async fn browser() -> Browser {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let driver = Command::new(std::env::var("CHROMEDRIVER").unwrap_or("chromedriver".into()))
        .arg(format!("--port={port}"))
        // A group of its own, which Drop ends whole.
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start chromedriver ({e}): the dashboard's browser tests need it — \
                 install it with `apt-get install -y chromium chromium-driver`"
            )
        });
    let mut caps = serde_json::Map::new();
    let mut chrome = json!({"args": [
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--window-size=1280,900", "--lang=en-US"
    ]});
    if let Ok(bin) = std::env::var("CHROME_BIN") {
        chrome["binary"] = json!(bin);
    } else if std::path::Path::new("/usr/bin/chromium").exists() {
        chrome["binary"] = json!("/usr/bin/chromium");
    }
    caps.insert("goog:chromeOptions".into(), chrome);
    let url = format!("http://127.0.0.1:{port}");
    let until = tokio::time::Instant::now() + Duration::from_secs(30);
    let c = loop {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector)
            .capabilities(caps.clone())
            .connect(&url)
            .await
        {
            Ok(c) => break c,
            Err(e) if tokio::time::Instant::now() > until => {
                panic!("chromedriver at {url} started no Chromium session: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    Browser { driver, c }
}

fn screens_dir() -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("ui-screens");
    std::fs::create_dir_all(&dir).expect("target/ui-screens can be made");
    dir
}

impl Browser {
    async fn open(&self, url: &str) {
        self.c.goto(url).await.expect("the page loads");
    }

    async fn shot(&self, name: &str) {
        let png = self.c.screenshot().await.expect("a screenshot");
        std::fs::write(screens_dir().join(format!("{name}.png")), png).expect("saved");
    }

    async fn text(&self, css: &str) -> String {
        match self.c.find(Locator::Css(css)).await {
            Ok(el) => el.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    async fn h1(&self) -> String {
        self.text("h1").await
    }

    /// Waits until the element `css` exists and its text satisfies `ok`; panics naming `what`.
    async fn wait_text(&self, css: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let until = tokio::time::Instant::now() + WAIT;
        loop {
            let t = self.text(css).await;
            if ok(&t) {
                return t;
            }
            if tokio::time::Instant::now() > until {
                let url = self.c.current_url().await.map(|u| u.to_string());
                let main = self.text("main").await;
                panic!("{what}: `{css}` reads {t:?} on {url:?}, whose page says:\n{main}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn sign_in(&self, ui: &str, key: &str) {
        self.open(&format!("{ui}/ui/sign-in")).await;
        self.shot("sign-in").await;
        let field = self.c.find(Locator::Id("key")).await.expect("a key field");
        field.send_keys(key).await.expect("typed");
        self.click("form[action='/ui/sign-in'] button").await;
        self.wait_text("h1", "signed in, the overview shows", |t| t == "Overview")
            .await;
    }

    async fn click(&self, css: &str) {
        self.c
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no `{css}` to click: {e}"))
            .click()
            .await
            .expect("clicked");
    }

    async fn fill(&self, id: &str, text: &str) {
        let el = self.c.find(Locator::Id(id)).await.expect("the field");
        el.clear().await.expect("cleared");
        el.send_keys(text).await.expect("typed");
    }

    async fn path(&self) -> String {
        self.c
            .current_url()
            .await
            .map(|u| u.path().to_string())
            .unwrap_or_default()
    }

    async fn close(self) {
        let _ = self.c.clone().close().await;
    }
}

fn lock() -> std::sync::MutexGuard<'static, ()> {
    BROWSER.lock().unwrap_or_else(|e| e.into_inner())
}

#[tokio::test]
#[allow(clippy::await_holding_lock)] // one browser at a time, across the whole test
async fn a_job_submitted_in_the_ui_turns_succeeded_without_a_reload() {
    let _one = lock();
    let (h, _api, ui) = host(false).await;
    let b = browser().await;
    b.sign_in(&ui, ADMIN_KEY).await;
    b.shot("overview-empty").await;

    // No worker takes the topic yet: the job waits, and its page says so.
    let topic = unique("ui.later.");
    b.open(&format!("{ui}/ui/jobs")).await;
    b.shot("jobs-empty").await;
    b.fill("topic", &topic).await;
    b.fill("payload", r#"{"hello": "from the browser"}"#).await;
    b.click("#submit-job").await;
    let state = b
        .wait_text("#job-state", "the job page opens", |t| !t.is_empty())
        .await;
    assert!(
        ["PENDING", "SCHEDULED"].contains(&state.as_str()),
        "{state}"
    );
    assert!(b.path().await.starts_with("/ui/jobs/"));
    // A mark the page keeps only as long as it is not reloaded.
    b.c.execute("window.__stay = 42; return null;", vec![])
        .await
        .expect("script runs");
    b.shot("job-pending").await;

    // A worker comes; the page turns SUCCEEDED by itself.
    h.ready_worker("ui-echo", "ui", &[&topic], &[], Mode::Echo)
        .await;
    b.wait_text("#job-state", "the page follows the job", |t| {
        t == "SUCCEEDED"
    })
    .await;
    let stayed =
        b.c.execute("return window.__stay;", vec![])
            .await
            .expect("script runs");
    assert_eq!(stayed, json!(42), "the page was reloaded");
    assert!(
        b.text("#job-live").await.contains("from the browser"),
        "the result echoes the payload"
    );
    b.shot("job-succeeded").await;

    b.open(&format!("{ui}/ui/jobs?topic={topic}")).await;
    b.wait_text("table.list tbody", "the list shows the job", |t| {
        t.contains("SUCCEEDED")
    })
    .await;
    b.shot("jobs").await;
    // The overview reads the host's metrics: the job ended, its latency is measured.
    b.open(&format!("{ui}/ui")).await;
    let states = b
        .wait_text("main", "the overview counts the job", |t| {
            t.contains("SUCCEEDED 1")
        })
        .await;
    assert!(states.contains("RUNNING 0"), "{states}");
    let latency = b.text("#tile-latency").await;
    assert!(
        latency.ends_with("ms") || latency.ends_with(" s"),
        "{latency}"
    );
    b.shot("overview").await;
    b.open(&format!("{ui}/ui/workers")).await;
    b.wait_text("table.list", "the worker is listed", |t| {
        t.contains("ui-echo")
    })
    .await;
    b.shot("workers").await;
    b.close().await;
    h.stop().await;
}

#[tokio::test]
#[allow(clippy::await_holding_lock)]
async fn approving_in_the_ui_finishes_the_run() {
    let _one = lock();
    let (h, api, ui) = host(true).await;
    let def: Value = serde_json::from_str(include_str!("../examples/workflows/approval.json"))
        .expect("the example is JSON");
    let (status, wf) = api.post("/api/v1/workflows", def).await;
    assert_eq!(status, 201, "{wf}");
    let wf_id = wf["id"].as_str().expect("an id").to_string();

    let b = browser().await;
    b.sign_in(&ui, ADMIN_KEY).await;
    b.open(&format!("{ui}/ui/workflows")).await;
    b.shot("workflows").await;
    b.open(&format!("{ui}/ui/workflows/{wf_id}")).await;
    assert_eq!(
        b.c.find_all(Locator::Css("svg.dag g.node"))
            .await
            .expect("nodes")
            .len(),
        3,
        "the DAG draws the three steps"
    );
    // Drawn, not only present: every box has a size, none swallowed by another element.
    let drawn =
        b.c.execute(
            "const boxes = [...document.querySelectorAll('svg.dag g.node rect')];
             return [boxes.filter(r => r.getBBox().width > 0).length,
                     document.querySelectorAll('svg.dag rect *, svg.dag path *').length];",
            vec![],
        )
        .await
        .expect("script runs");
    assert_eq!(
        drawn,
        json!([3, 0]),
        "boxes drawn, nothing nested in a box or edge"
    );
    b.shot("workflow").await;

    // The input is checked against the schema: a missing `version` is refused.
    b.fill("input", "{}").await;
    b.click("#start-run").await;
    b.wait_text("main", "the schema error is shown", |t| {
        t.contains("version")
    })
    .await;
    b.shot("error-input-schema").await;

    b.open(&format!("{ui}/ui/workflows/{wf_id}")).await;
    b.fill("input", r#"{"version": "1.2.3"}"#).await;
    b.click("#start-run").await;
    b.wait_text("#run-status", "the run page opens", |t| !t.is_empty())
        .await;
    // `build` runs on the demo workers, then `review` waits for a human.
    b.wait_text("#step-review h3", "the approval step waits", |t| {
        t.contains("waiting")
    })
    .await;
    b.shot("run-waiting").await;
    b.fill("comment-review", "ship it").await;
    b.click("#step-review button[value='true']").await;
    b.wait_text("#run-status", "the run finishes", |t| t == "succeeded")
        .await;
    let deploy =
        b.c.find(Locator::Css("svg.dag g[data-step='deploy']"))
            .await
            .expect("the deploy step is drawn");
    assert_eq!(
        deploy.attr("class").await.expect("a class").as_deref(),
        Some("node s-succeeded")
    );
    assert!(b.text("#step-review").await.contains("ship it"));
    b.shot("run-succeeded").await;
    b.close().await;
    h.stop().await;
}

#[tokio::test]
#[allow(clippy::await_holding_lock)]
async fn two_dead_letters_are_retried_in_bulk() {
    let _one = lock();
    let (h, api, ui) = host(false).await;
    let topic = unique("ui.fail.");
    h.ready_worker(
        "ui-fail",
        "fail",
        &[&topic],
        &[],
        Mode::Exec("echo boom >&2; exit 3".into()),
    )
    .await;
    let mut ids = Vec::new();
    for n in 0..2 {
        ids.push(
            api.submit(json!({"topic": topic, "payload": {"n": n}}))
                .await,
        );
    }
    api.wait_for(
        &format!("/api/v1/dlq?topic={topic}"),
        "both dead letters are listed",
        |s, v| s == 200 && v["items"].as_array().is_some_and(|a| a.len() == 2),
    )
    .await;

    let b = browser().await;
    b.sign_in(&ui, ADMIN_KEY).await;
    b.open(&format!("{ui}/ui/dlq?topic={topic}")).await;
    b.shot("dlq").await;
    b.click("input[data-select-all]").await;
    b.click("#retry-selected").await;
    b.wait_text(".notice", "the bulk retry reports", |t| {
        t.starts_with("2 retried")
    })
    .await;
    b.shot("dlq-retried").await;
    let (_, jobs) = api.get(&format!("/api/v1/jobs?topic={topic}")).await;
    for id in &ids {
        let (status, _) = api.get(&format!("/api/v1/dlq/{id}")).await;
        assert_eq!(status, 404, "the retried entry {id} is gone");
        assert!(
            jobs["items"]
                .as_array()
                .is_some_and(|a| a.iter().any(|j| j["retry_of"] == id.as_str())),
            "{id} was retried: {jobs}"
        );
    }
    b.open(&format!("{ui}/ui/jobs/{}", ids[0])).await;
    b.wait_text("#job-state", "the failed job's page", |t| t == "FAILED")
        .await;
    b.shot("job-failed").await;
    b.close().await;
    h.stop().await;
}

#[tokio::test]
#[allow(clippy::await_holding_lock)]
async fn a_tenant_key_does_not_see_another_tenants_job() {
    let _one = lock();
    let (h, api, ui) = host(false).await;
    let topic = unique("ui.tenants.");
    let acme = api
        .submit(json!({"topic": topic, "tenant_id": "acme"}))
        .await;
    let beta = api
        .submit(json!({"topic": topic, "tenant_id": "beta"}))
        .await;

    let b = browser().await;
    b.sign_in(&ui, ACME_KEY).await;
    assert!(b.text("#caller").await.contains("acme"));
    b.open(&format!("{ui}/ui/jobs?topic={topic}")).await;
    let list = b
        .wait_text("main", "the tenant's jobs are listed", |t| {
            t.contains(&acme)
        })
        .await;
    assert!(!list.contains(&beta), "acme's key lists beta's job: {list}");
    b.shot("tenant-jobs").await;
    // Its page answers as for a job that does not exist, by its whole id or its local part.
    for id in [
        beta.clone(),
        beta.split('~').nth(1).unwrap_or(&beta).to_string(),
    ] {
        b.open(&format!("{ui}/ui/jobs/{id}")).await;
        assert_eq!(b.h1().await, "Not found", "acme's key opened {id}");
        assert!(!b.text("main").await.contains("tenant_id"));
    }
    b.shot("tenant-not-found").await;
    // Nor can it list beta's by filter: the API's 403 for another tenant shows as the error.
    b.open(&format!("{ui}/ui/jobs?tenant=beta")).await;
    assert_eq!(b.h1().await, "Forbidden");
    b.close().await;
    h.stop().await;
}

#[tokio::test]
#[allow(clippy::await_holding_lock)]
async fn every_page_renders_signed_in_and_deep_links_survive_a_reload() {
    let _one = lock();
    let (h, api, ui) = host(true).await;
    let b = browser().await;
    // A deep link before signing in leads to the sign-in page, and on to the page after it.
    b.open(&format!("{ui}/ui/workers")).await;
    assert_eq!(b.h1().await, "Sign in");
    // The page's assets came compressed: their bytes on the wire, as the browser counts them.
    let sizes =
        b.c.execute(
            "return performance.getEntriesByType('resource')
               .filter(e => e.name.includes('/ui/assets/'))
               .map(e => [e.name.split('/').pop(), e.encodedBodySize, e.decodedBodySize]);",
            vec![],
        )
        .await
        .expect("script runs");
    let sizes = sizes.as_array().expect("a list").clone();
    assert_eq!(sizes.len(), coretex::ui::ASSETS.len(), "{sizes:?}");
    let (mut sent, mut raw) = (0, 0);
    for entry in &sizes {
        let (wire, decoded) = (entry[1].as_u64().unwrap(), entry[2].as_u64().unwrap());
        assert!(wire < decoded, "sent compressed: {entry}");
        sent += wire;
        raw += decoded;
    }
    let report =
        format!("the dashboard's assets: {raw} bytes, {sent} bytes on the wire: {sizes:?}\n");
    std::fs::write(screens_dir().join("asset-weight.txt"), &report).expect("saved");
    assert!(sent < 300 * 1024, "{report}");
    b.fill("key", ADMIN_KEY).await;
    b.click("form[action='/ui/sign-in'] button").await;
    b.wait_text("h1", "signed in, the deep link opens", |t| t == "Workers")
        .await;
    let job = api
        .submit(json!({"topic": "job.echo", "payload": {"big": "x".repeat(5000)}}))
        .await;
    api.wait_state(&job, "SUCCEEDED", WAIT).await;
    for (path, title, name) in [
        ("/ui".to_string(), "Overview", "overview-demo"),
        ("/ui/jobs".into(), "Jobs", "jobs-demo"),
        (format!("/ui/jobs/{job}"), "", "job-large-payload"),
        ("/ui/workflows".into(), "Workflows", "workflows-empty"),
        ("/ui/dlq".into(), "Dead letters", "dlq-empty"),
        ("/ui/workers".into(), "Workers", "workers-demo"),
        ("/ui/plugins".into(), "Plugins", "plugins"),
        ("/ui/config".into(), "Config", "config"),
        ("/ui/nowhere".into(), "Not found", "not-found"),
    ] {
        b.open(&format!("{ui}{path}")).await;
        b.c.refresh().await.expect("reloads");
        let h1 = b.h1().await;
        if title.is_empty() {
            assert!(h1.starts_with("Job "), "{path}: {h1}");
        } else {
            assert_eq!(h1, title, "{path}");
        }
        b.shot(name).await;
    }
    // The dispatch strategy of a scope is chosen from the loaded strategies.
    b.open(&format!("{ui}/ui/plugins")).await;
    let strategy =
        b.c.find(Locator::Css("#strategy option"))
            .await
            .expect("a loaded strategy")
            .attr("value")
            .await
            .expect("a value")
            .expect("named");
    b.click("#set-strategy").await;
    b.wait_text(".notice", "the strategy is set", |t| {
        t.contains(&format!("now dispatches with {strategy}"))
    })
    .await;
    let (_, system) = api.get("/api/v1/config?scope=system").await;
    assert_eq!(system["data"]["dispatch"]["strategy"], strategy.as_str());
    // An upload that is not a component shows the API's refusal.
    let junk = std::env::temp_dir().join(format!("{}.wasm", unique("not-a-plugin")));
    std::fs::write(&junk, b"not wasm").expect("written");
    b.fill("plugin-name", "junk").await;
    b.c.find(Locator::Id("plugin-wasm"))
        .await
        .expect("a file field")
        .send_keys(&junk.to_string_lossy())
        .await
        .expect("chosen");
    b.click("#upload-plugin").await;
    let refusal = b
        .wait_text("main .error", "the upload is refused", |t| !t.is_empty())
        .await;
    b.shot("plugin-upload-refused").await;
    let _ = std::fs::remove_file(&junk);
    assert!(b.h1().await.starts_with("Error 4"), "{refusal}");
    // The large payload is folded.
    b.open(&format!("{ui}/ui/jobs/{job}")).await;
    assert!(b.text("details.json summary").await.contains("bytes"));
    // Signing out ends the session.
    b.click("form[action='/ui/sign-out'] button").await;
    b.open(&format!("{ui}/ui/jobs")).await;
    assert_eq!(b.h1().await, "Sign in");
    b.close().await;
    h.stop().await;
}

#[tokio::test]
#[allow(clippy::await_holding_lock)]
async fn config_scopes_show_as_a_tree_and_an_edit_is_previewed_before_it_is_saved() {
    let _one = lock();
    let (h, api, ui) = host(false).await;
    for body in [
        json!({"scope": "system", "data": {"lvl": "system", "tenancy": {"teams": {"payments": "acme"}}}}),
        json!({"scope": "org", "id": "acme", "data": {"lvl": "org"}}),
        json!({"scope": "org", "id": "beta", "data": {"lvl": "beta's"}}),
        json!({"scope": "team", "id": "payments", "data": {"team": true}}),
        json!({"scope": "workflow", "id": "acme~wf", "data": {"lvl": "workflow"}}),
        json!({"scope": "step", "workflow_id": "acme~wf", "step_id": "build", "data": {"x": 1}}),
    ] {
        let (status, v) = api.post("/api/v1/config", body).await;
        assert_eq!(status, 200, "{v}");
    }
    let b = browser().await;
    b.sign_in(&ui, ADMIN_KEY).await;
    b.open(&format!("{ui}/ui/config")).await;
    let tree = b.text("aside.scopes").await;
    for name in ["system", "acme", "payments", "acme~wf", "build", "beta"] {
        assert!(tree.contains(name), "the tree lacks {name}: {tree}");
    }
    b.shot("config-tree").await;

    // A scope opens from the tree, with its own chain's effective config.
    b.click("aside.scopes a[href='/ui/config?scope=org&id=acme']")
        .await;
    b.wait_text("#config-revision", "acme's document opens", |t| t == "1")
        .await;
    assert!(b.text("#effective").await.contains("\"org\""));

    // An edit is previewed: the merged result and the keys it changes, nothing saved.
    b.fill("data", r#"{"lvl": "draft", "extra": true}"#).await;
    b.click("#preview-config").await;
    let changed = b
        .wait_text("#preview-changed", "the preview names the changes", |t| {
            !t.is_empty()
        })
        .await;
    assert_eq!(changed, "Changes extra, lvl.");
    assert!(b.text("#config-preview").await.contains("\"draft\""));
    assert!(
        b.text("#effective").await.contains("\"org\""),
        "the saved config is shown beside it"
    );
    let (_, stored) = api.get("/api/v1/config?scope=org&id=acme").await;
    assert_eq!(stored["revision"], 1, "a preview stores nothing: {stored}");
    b.shot("config-preview").await;

    // Saved from the preview, against the revision it was made on.
    b.click("#save-config").await;
    b.wait_text(".notice", "the edit is saved", |t| {
        t == "Saved as revision 2"
    })
    .await;
    let (_, stored) = api.get("/api/v1/config?scope=org&id=acme").await;
    assert_eq!(stored["data"], json!({"lvl": "draft", "extra": true}));

    // Someone else saves meanwhile: this page's edit is refused, and kept in the form.
    let (status, _) = api
        .post(
            "/api/v1/config",
            json!({"scope": "org", "id": "acme", "data": {"lvl": "theirs"}}),
        )
        .await;
    assert_eq!(status, 200);
    b.fill("data", r#"{"lvl": "mine"}"#).await;
    b.click("#save-config").await;
    b.wait_text("#config-refused", "the stale save is refused", |t| {
        !t.is_empty()
    })
    .await;
    let kept =
        b.c.find(Locator::Id("data"))
            .await
            .expect("the form")
            .prop("value")
            .await
            .expect("a value");
    assert_eq!(kept.as_deref(), Some(r#"{"lvl": "mine"}"#));
    assert!(
        b.text("#config-refused").await.contains("theirs"),
        "the change it would overwrite is shown"
    );
    b.shot("config-stale").await;
    let (_, stored) = api.get("/api/v1/config?scope=org&id=acme").await;
    assert_eq!(stored["data"]["lvl"], "theirs");
    // Seen, it may be replaced deliberately.
    b.click("#save-config").await;
    b.wait_text(".notice", "the edit replaces it", |t| {
        t == "Saved as revision 4"
    })
    .await;

    // A tenant key's tree holds its own scopes, never another tenant's nor the system's.
    b.click("form[action='/ui/sign-out'] button").await;
    b.sign_in(&ui, ACME_KEY).await;
    b.open(&format!("{ui}/ui/config")).await;
    let tree = b.text("ul.tree").await;
    for name in ["acme", "payments", "acme~wf", "build"] {
        assert!(tree.contains(name), "acme's tree lacks {name}: {tree}");
    }
    assert!(!tree.contains("beta") && !tree.contains("system"), "{tree}");
    // Its workflow's step opens as the effective config it takes part in.
    b.click("aside.scopes a[href*='for_step=build']").await;
    let eff = b
        .wait_text("#effective", "the step's effective config", |t| {
            t.contains("\"x\"")
        })
        .await;
    assert!(
        eff.contains("\"workflow\"") && !eff.contains("beta"),
        "{eff}"
    );
    b.shot("config-tenant").await;
    b.close().await;
    h.stop().await;
}

fn form(pairs: &[(&str, &str)]) -> String {
    let mut f = form_urlencoded::Serializer::new(String::new());
    f.extend_pairs(pairs);
    f.finish()
}

/// Without a browser: the cookie's flags, and forms without their token refused.
#[tokio::test]
async fn the_session_cookie_is_strict_and_forms_need_their_csrf_token() {
    let (h, _api, ui) = host(false).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("a client");
    // Signing in needs the sign-in page's token, in its cookie and its form.
    let r = http
        .post(format!("{ui}/ui/sign-in"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("key", ADMIN_KEY), ("_csrf", "guess")]))
        .send()
        .await
        .expect("answers");
    assert_eq!(r.status(), 403, "a sign-in without the page's token");
    let page = http
        .get(format!("{ui}/ui/sign-in"))
        .send()
        .await
        .expect("answers");
    let pre = page
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|c| c.split(';').next())
        .expect("a sign-in cookie")
        .to_string();
    let nonce = pre
        .split_once('=')
        .map(|(_, v)| v.to_string())
        .unwrap_or_default();
    let r = http
        .post(format!("{ui}/ui/sign-in"))
        .header("cookie", &pre)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("key", ADMIN_KEY), ("_csrf", nonce.as_str())]))
        .send()
        .await
        .expect("answers");
    assert_eq!(r.status(), 303);
    let set = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("coretex_ui_key="))
        .expect("the session cookie")
        .to_string();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(set.contains(flag), "{set} lacks {flag}");
    }
    assert!(!set.contains("Secure"), "no TLS here: {set}");
    let session = set.split(';').next().unwrap_or_default().to_string();

    // A signed-in form without the token, or with another session's, changes nothing.
    let topic = unique("ui.csrf.");
    for token in ["", "0000"] {
        let r = http
            .post(format!("{ui}/ui/jobs"))
            .header("cookie", &session)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(&[("topic", topic.as_str()), ("_csrf", token)]))
            .send()
            .await
            .expect("answers");
        assert_eq!(r.status(), 403, "a form with token {token:?}");
    }
    let admin = Api::with_key(h.running.addr, ADMIN_KEY);
    let (_, jobs) = admin.get(&format!("/api/v1/jobs?topic={topic}")).await;
    assert_eq!(jobs["items"], json!([]), "no job was submitted");

    // With the token from a page of the session, the same form submits.
    let page = http
        .get(format!("{ui}/ui/jobs"))
        .header("cookie", &session)
        .send()
        .await
        .expect("answers");
    assert_eq!(page.status(), 200);
    let csp = page
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let html = page.text().await.expect("a page");
    let token = html
        .split("name=\"_csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a token in the form")
        .to_string();
    let r = http
        .post(format!("{ui}/ui/jobs"))
        .header("cookie", &session)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[
            ("topic", topic.as_str()),
            ("_csrf", token.as_str()),
        ]))
        .send()
        .await
        .expect("answers");
    assert_eq!(r.status(), 303);
    let (_, jobs) = admin.get(&format!("/api/v1/jobs?topic={topic}")).await;
    assert_eq!(jobs["items"].as_array().map(Vec::len), Some(1));
    h.stop().await;
}
