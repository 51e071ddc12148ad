//! The browser pages, in a real browser: headless Chromium driven through
//! `chromedriver` (WebDriver) against real nodes.
//!
//! - Two playground pages, one per node of a two-node Redis cluster, join
//!   with one passphrase, both see `ready`; a tank moved with the arrow keys
//!   in one page moves in the other. Screenshots of both are not blank.
//! - Resume: a page whose connection drops resumes by itself, with what it
//!   missed; the other page sees `playerAway` and `playerBack`.
//! - The admin view shows both nodes and the lobby, and its figures change
//!   after traffic; it refuses a missing or wrong token.
//! - Player accounts: with `--auth required`, two pages given tokens for
//!   different users join one passphrase and each shows the other's user
//!   id; no token shows in the raw frames; a page without a token shows
//!   `token_required` and stops.
//! - The playground runs on the JavaScript client (it imports
//!   `/client/v1.js`; its frames panel comes from the client's `frame`
//!   event, its resume from the client's).
//! - Quick match: two pages, one per node, press "Quick match" and meet in
//!   one lobby; the host's tank (seat 1) wears a crown in both, which moves
//!   to seat 2 when the host leaves. A third page pressing "Watch" with the
//!   passphrase box empty watches that game (the queue's latest).
//! - Watching: two pages play, a third presses "Watch" (on the other node)
//!   and draws both tanks, moving as they move, with its keys doing
//!   nothing and "watching (1 spectators)" shown; a player page shows
//!   "1 watching".
//! - The playground's Join button is disabled while a join is on its way,
//!   while joined and while resuming, and enabled again after Leave and
//!   after a refused join.
//! - With `--playground off` the playground answers 404 and the WebSocket
//!   on `/` and `/ws` works as before.
//! - The JavaScript client: served at `/client.js` and `/client/v1.js` (off
//!   with the playground); imported by a page, it plays with a peer and,
//!   after a page reload, takes its seat back from `sessionStorage`.
//!
//! Needs `chromium` and `chromedriver` (Debian: `chromium`,
//! `chromium-driver`; scripts/test.sh installs them). A missing driver fails
//! the test. Screenshots go to `target/tmp/browser/`; with
//! `LOBBY_RELAY_SCREENSHOTS=DIR` (e.g. `docs/images`) the README's images
//! are written there too.

use crate::support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fantoccini::elements::Element;
use fantoccini::key::Key;
use fantoccini::{Client as Browser, ClientBuilder, Locator};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use support::{Client, Relays};

/// Every wait on the browser is bounded by this.
const WAIT: Duration = Duration::from_secs(15);
/// How long chromedriver and a browser session may take to start.
const START: Duration = Duration::from_secs(30);
/// The admin token of the tests (at least 16 characters).
const TOKEN: &str = "browser-test-admin-token";
/// The HS256 secret of the player-account test (at least 32 bytes).
const AUTH_SECRET: &str = "browser-test-hs256-secret-of-32-bytes";

// ---------------------------------------------------------------------------
// chromedriver and Chromium
// ---------------------------------------------------------------------------

/// A `chromedriver` on a free port, killed on drop.
struct Chromedriver {
    child: Child,
    port: u16,
}

impl Chromedriver {
    fn start() -> Chromedriver {
        let program = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".to_owned());
        let port = support::free_port();
        let child = match Command::new(&program)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "`{program}` is not on PATH: the browser tests drive headless Chromium through it. \
                 Run scripts/test.sh, which installs it, or `apt-get install -y chromium \
                 chromium-driver` (CHROMEDRIVER=/path/to/chromedriver picks another one)."
            ),
            Err(e) => panic!("cannot run `{program}`: {e}"),
        };
        let mut driver = Chromedriver { child, port };
        let deadline = Instant::now() + START;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = driver.child.try_wait() {
                panic!("chromedriver exited at start: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen on port {port} within {START:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        driver
    }

    /// A new headless Chromium session (its own browser process).
    async fn browser(&self) -> Browser {
        let mut options = json!({
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--window-size=1280,860",
                "--hide-scrollbars",
            ]
        });
        if let Ok(binary) = std::env::var("CHROMIUM") {
            options["binary"] = json!(binary);
        }
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), json!("chrome"));
        caps.insert("goog:chromeOptions".into(), options);
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let url = format!("http://127.0.0.1:{}", self.port);
        tokio::time::timeout(
            START,
            ClientBuilder::new(connector)
                .capabilities(caps)
                .connect(&url),
        )
        .await
        .unwrap_or_else(|_| panic!("starting a Chromium session took more than {START:?}"))
        .unwrap_or_else(|e| panic!("cannot start a Chromium session through chromedriver: {e}"))
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `script` in the page until it returns something other than
/// `null`/`false`, and returns that; fails after [`WAIT`] with `what`.
async fn wait_js(browser: &Browser, script: &str, what: &str) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let last = match tokio::time::timeout(WAIT, browser.execute(script, vec![])).await {
            Ok(Ok(value)) if !matches!(value, Value::Null | Value::Bool(false)) => return value,
            Ok(Ok(value)) => value,
            Ok(Err(e)) => json!(e.to_string()),
            Err(_) => json!("the script did not return"),
        };
        if tokio::time::Instant::now() >= deadline {
            panic!("{what}: still not true after {WAIT:?} (last: {last})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs one WebDriver command with the [`WAIT`] bound.
async fn bounded<T, E: std::fmt::Display>(
    what: &str,
    command: impl std::future::Future<Output = Result<T, E>>,
) -> T {
    match tokio::time::timeout(WAIT, command).await {
        Ok(Ok(value)) => value,
        Ok(Err(e)) => panic!("{what}: {e}"),
        Err(_) => panic!("{what}: no answer within {WAIT:?}"),
    }
}

/// Takes a screenshot, checks that it is a real picture (many distinct
/// colours, not one flat one), and saves it as `name` (and in the docs'
/// directory too when `publish` and `LOBBY_RELAY_SCREENSHOTS` is set).
async fn screenshot(browser: &Browser, name: &str, publish: bool) {
    let png = bounded(&format!("screenshot {name}"), browser.screenshot()).await;
    let colours = distinct_colours(&png);
    assert!(
        colours >= 64,
        "screenshot {name} looks blank: only {colours} distinct colours"
    );
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("browser");
    std::fs::create_dir_all(&dir).expect("screenshot directory");
    std::fs::write(dir.join(name), &png).expect("write screenshot");
    if let Some(docs) = std::env::var_os("LOBBY_RELAY_SCREENSHOTS").filter(|_| publish) {
        let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(docs);
        std::fs::create_dir_all(&docs).expect("screenshot directory");
        std::fs::write(docs.join(name), &png).expect("write screenshot");
    }
}

/// How many different RGB colours a PNG has.
fn distinct_colours(png: &[u8]) -> usize {
    let mut decoder = png::Decoder::new(png);
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("a PNG frame");
    let channels = info.color_type.samples();
    assert!(
        channels >= 3,
        "expected a colour PNG, got {:?}",
        info.color_type
    );
    let mut seen = std::collections::HashSet::new();
    for pixel in buf[..info.buffer_size()].chunks_exact(channels) {
        seen.insert((pixel[0], pixel[1], pixel[2]));
    }
    seen.len()
}

// ---------------------------------------------------------------------------
// Plain HTTP
// ---------------------------------------------------------------------------

/// `GET path` with extra header lines: status, headers (lower-cased) and body.
fn http_get(addr: SocketAddr, path: &str, headers: &[&str]) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for header in headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    let (head, body) = response.split_once("\r\n\r\n").expect("a response head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    (status, head.to_ascii_lowercase(), body.to_owned())
}

// ---------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------

/// Opens the playground of `addr`, types the passphrase and joins.
async fn open_and_join(browser: &Browser, addr: SocketAddr, passphrase: &str) {
    open_and_join_as(browser, addr, passphrase, None).await;
}

/// Opens the playground of `addr`, types `token` (if any) under "player
/// account", types the passphrase and joins.
async fn open_and_join_as(
    browser: &Browser,
    addr: SocketAddr,
    passphrase: &str,
    token: Option<&str>,
) {
    bounded(
        "open the playground",
        browser.goto(&format!("http://{addr}/playground")),
    )
    .await;
    if let Some(token) = token {
        let summary = bounded(
            "find \"player account\"",
            browser.find(Locator::Css("#account summary")),
        )
        .await;
        bounded("open \"player account\"", summary.click()).await;
        let field = bounded("find the token box", browser.find(Locator::Id("token"))).await;
        bounded("type the token", field.send_keys(token)).await;
    }
    let input = bounded(
        "find the passphrase box",
        browser.find(Locator::Id("passphrase")),
    )
    .await;
    bounded("type the passphrase", input.send_keys(passphrase)).await;
    let join = bounded("find Join", browser.find(Locator::Id("join"))).await;
    bounded("click Join", join.click()).await;
}

/// Empties a text box and types `text` into it.
async fn retype(element: &Element, text: &str) {
    bounded("clear the text box", element.clear()).await;
    bounded("type into the text box", element.send_keys(text)).await;
}

/// An HS256 token for `sub`, valid for ten minutes.
fn player_token(sub: &str) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 600;
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": sub, "exp": exp}),
        &EncodingKey::from_secret(AUTH_SECRET.as_bytes()).expect("key"),
    )
    .expect("token")
}

/// The x position of the tank in `seat` as a page sees it.
async fn tank_x(browser: &Browser, seat: u64) -> Option<f64> {
    let script = format!("const t = window.playground.state.tanks[{seat}]; return t ? t.x : null;");
    bounded("read a tank", browser.execute(&script, vec![]))
        .await
        .as_f64()
}

/// Runs a browser test with a bound of two minutes; on timeout the nodes'
/// logs are printed and the test fails, naming `what`.
async fn within_two_minutes(
    logs: &[support::NodeLogs],
    what: &str,
    test: impl Future<Output = ()>,
) {
    if tokio::time::timeout(Duration::from_secs(120), test)
        .await
        .is_err()
    {
        for log in logs {
            log.print();
        }
        panic!("the {what} did not finish within 120 s");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pages_play_through_two_nodes_and_the_admin_view_follows() {
    let driver = Chromedriver::start();
    let relays = Relays::redis_with(&["--admin-token", TOKEN]);
    let logs = relays.logs();
    let test = async {
        let passphrase = format!("browser-tanks-{}", support::unique());
        let page_a = driver.browser().await;
        let page_b = driver.browser().await;
        open_and_join(&page_a, relays.addr_a(), &passphrase).await;
        wait_js(
            &page_a,
            "return window.playground.state.seat === 1",
            "page A holds seat 1",
        )
        .await;
        open_and_join(&page_b, relays.addr_b(), &passphrase).await;
        for (page, name) in [(&page_a, "A"), (&page_b, "B")] {
            wait_js(
                page,
                "return window.playground.state.ready && window.playground.state.events.includes('ready')",
                &format!("page {name} sees ready"),
            )
            .await;
        }
        // Each page knows its node (pong with "node") and a ping's round trip.
        for (page, node) in [(&page_a, "a"), (&page_b, "b")] {
            let seen = wait_js(
                page,
                "const s = window.playground.state; return s.node && s.rtt !== null ? s.node : null",
                "the page shows its node and a ping",
            )
            .await;
            assert_eq!(seen, json!(node));
        }

        // B sees A's tank (sent on ready); A moves it right; B sees it move.
        wait_js(
            &page_b,
            "return window.playground.state.tanks[1] !== undefined",
            "page B sees tank 1",
        )
        .await;
        let before = tank_x(&page_b, 1).await.expect("tank 1 on page B");
        let arena = bounded("find the arena", page_a.find(Locator::Id("arena"))).await;
        bounded("focus the arena", arena.click()).await;
        let right = Key::Right.to_string().repeat(5);
        bounded("press the right arrow", arena.send_keys(&right)).await;
        let moved = wait_js(
            &page_b,
            &format!(
                "const t = window.playground.state.tanks[1]; return t && t.x > {before} ? t.x : null"
            ),
            "page B sees tank 1 move right",
        )
        .await;
        assert_eq!(moved.as_f64(), tank_x(&page_a, 1).await, "both pages agree");
        // A shot from B reaches A as playerShoot.
        let arena_b = bounded("find the arena", page_b.find(Locator::Id("arena"))).await;
        bounded("focus the arena", arena_b.click()).await;
        bounded("shoot", arena_b.send_keys(" ")).await;
        bounded(
            "press the left arrow",
            arena_b.send_keys(&Key::Left.to_string()),
        )
        .await;
        wait_js(
            &page_a,
            "return [...document.querySelectorAll('#frames .in')].some(l => l.textContent.includes('playerShoot'))",
            "page A shows B's playerShoot frame",
        )
        .await;
        screenshot(&page_a, "playground.png", true).await;
        screenshot(&page_b, "playground-b.png", false).await;

        // The admin view, from node a: both nodes, the lobby, and figures that
        // move with traffic.
        let admin = driver.browser().await;
        bounded(
            "open the admin view",
            admin.goto(&format!("http://{}/admin#token={TOKEN}", relays.addr_a())),
        )
        .await;
        let prefix = &support::lobby_id(&passphrase)[..8];
        wait_js(
            &admin,
            &format!(
                "const nodes = [...document.querySelectorAll('#nodes tbody tr')].map(r => r.dataset.node);
                 const lobby = document.querySelector('#lobbies tbody tr[data-lobby=\"{prefix}\"]');
                 return nodes.includes('a') && nodes.includes('b') && lobby !== null
                     && lobby.textContent.includes('→ a') && lobby.textContent.includes('→ b')
                     && lobby.cells[2].textContent === '0'
                     && lobby.cells[3].textContent === 'seat 1 (epoch 1)'
                     && lobby.cells[4].textContent === '–'
                     && lobby.cells[5].textContent.startsWith('1 (host) → ')"
            ),
            "the admin view shows nodes a and b, the lobby's seats on both and its host",
        )
        .await;
        let fragment = bounded("read the URL", admin.current_url()).await;
        assert_eq!(
            fragment.fragment(),
            None,
            "the token is taken out of the URL"
        );
        let total = |text: Value| text.as_str().and_then(|t| t.parse::<u64>().ok());
        let read_total = "return document.getElementById('total-out').textContent";
        let first = total(wait_js(&admin, read_total, "the total").await).expect("a number");
        for _ in 0..3 {
            bounded(
                "move tank 2",
                arena_b.send_keys(&Key::Up.to_string().repeat(4)),
            )
            .await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        wait_js(
            &admin,
            &format!("return Number(document.getElementById('total-out').textContent) > {first}"),
            "the admin view's message total grows after traffic",
        )
        .await;
        if std::env::var_os("LOBBY_RELAY_SCREENSHOTS").is_some() {
            // Taking the published pictures: play for a while first, so
            // that the charts have something to show.
            for i in 0..40 {
                let key = if i % 8 < 4 { Key::Down } else { Key::Up };
                bounded(
                    "play",
                    arena_b.send_keys(&key.to_string().repeat(1 + i % 3)),
                )
                .await;
                tokio::time::sleep(Duration::from_millis(700)).await;
            }
        }
        // Wait for a few readings so that the charts have lines.
        wait_js(
            &admin,
            "return [...window.admin.readings.values()].every(l => l.length >= 3)",
            "a few readings per node",
        )
        .await;
        screenshot(&admin, "admin.png", true).await;
        let html = bounded("page source", admin.source()).await;
        assert!(
            !html.contains(&passphrase),
            "no passphrase on the admin page"
        );
        for page in [page_a, page_b, admin] {
            let _ = tokio::time::timeout(WAIT, page.close()).await;
        }
    };
    within_two_minutes(&logs, "browser test", test).await;
}

/// Resume in the playground: pages A (node a) and B (node b) join one
/// passphrase with resume on (the default). A's connection is dropped by its
/// test hook and kept "offline" while B moves its tank; once the network is
/// back, A resumes by itself, shows `resumed`, has B's tank where B has it,
/// and its frames show the `resume` and `resumed` frames; B saw
/// `playerAway` (A's tank faded) and then `playerBack`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_page_resumes_and_gets_what_it_missed() {
    let driver = Chromedriver::start();
    let relays = Relays::redis();
    let logs = relays.logs();
    let test = async {
        let passphrase = format!("browser-resume-{}", support::unique());
        let page_a = driver.browser().await;
        let page_b = driver.browser().await;
        open_and_join(&page_a, relays.addr_a(), &passphrase).await;
        wait_js(
            &page_a,
            "const s = window.playground.state; return s.seat === 1 && s.resumable",
            "page A holds seat 1, resumable",
        )
        .await;
        open_and_join(&page_b, relays.addr_b(), &passphrase).await;
        for (page, name) in [(&page_a, "A"), (&page_b, "B")] {
            wait_js(
                page,
                "const s = window.playground.state; return s.ready && s.resumable",
                &format!("page {name} sees ready, resumable"),
            )
            .await;
        }
        wait_js(
            &page_a,
            "return window.playground.state.tanks[2] !== undefined",
            "page A sees tank 2",
        )
        .await;

        // The network of A goes away (for a minute at most: until
        // restoreNetwork()); its resume attempts fail meanwhile.
        let dropped = bounded(
            "drop A's connection",
            page_a.execute("return window.playground.dropConnection(60000)", vec![]),
        )
        .await;
        assert_eq!(dropped, json!(true), "page A had a connection to drop");
        wait_js(
            &page_b,
            "const s = window.playground.state; return s.events.includes('playerAway') && s.away[1] === true",
            "page B sees seat 1 away",
        )
        .await;

        // B moves while A is away.
        let arena_b = bounded("find the arena", page_b.find(Locator::Id("arena"))).await;
        bounded("focus the arena", arena_b.click()).await;
        let keys = Key::Left.to_string().repeat(5) + &Key::Down.to_string().repeat(3);
        bounded("move tank 2", arena_b.send_keys(&keys)).await;
        let want = wait_js(
            &page_b,
            "const t = window.playground.state.tanks[2]; return t.x === 490 && t.y === 110 ? [t.x, t.y] : null",
            "page B's tank moved 5 left and 3 down (from 540, 80)",
        )
        .await;
        let still_away = bounded(
            "read A's state",
            page_a.execute("return window.playground.state.reconnecting", vec![]),
        )
        .await;
        assert_eq!(still_away, json!(true), "page A is still resuming");
        // Let B's moves reach the relay, then bring A's network back: A's
        // next attempt (within the 2 s of the backoff, plus jitter) resumes.
        tokio::time::sleep(Duration::from_millis(500)).await;
        bounded(
            "restore A's network",
            page_a.execute("window.playground.restoreNetwork()", vec![]),
        )
        .await;
        wait_js(
            &page_a,
            "const s = window.playground.state; return s.events.includes('resumed') && !s.reconnecting && s.seat === 1",
            "page A resumes seat 1",
        )
        .await;
        let seen = wait_js(
            &page_a,
            &format!(
                "const t = window.playground.state.tanks[2]; const w = {want};
                 return t && t.x === w[0] && t.y === w[1] ? [t.x, t.y] : null"
            ),
            "page A sees tank 2 where page B has it",
        )
        .await;
        assert_eq!(seen, want);
        let replayed = bounded(
            "read A's last resume",
            page_a.execute(
                "return window.playground.state.lastResumed.replayed",
                vec![],
            ),
        )
        .await;
        assert!(
            replayed.as_u64().is_some_and(|n| n >= 1),
            "B's moves were replayed to A: {replayed}"
        );
        wait_js(
            &page_a,
            "const li = document.querySelector('#events li.resumed');
             return li !== null && /resumed \\(\\d+ replayed\\)/.test(li.textContent)",
            "page A's events show \"resumed (k replayed)\"",
        )
        .await;
        wait_js(
            &page_a,
            "const lines = (dir) => [...document.querySelectorAll('#frames .' + dir)].map(l => l.textContent);
             return lines('out').some(t => t.includes('{\"type\":\"resume\",\"token\":'))
                 && lines('in').some(t => t.includes('{\"type\":\"resumed\",'))",
            "page A's raw frames show resume and resumed",
        )
        .await;
        wait_js(
            &page_b,
            "const s = window.playground.state, e = s.events;
             return e.indexOf('playerAway') >= 0 && e.lastIndexOf('playerBack') > e.indexOf('playerAway')
                 && s.away[1] === undefined && s.tanks[1] !== undefined",
            "page B sees playerAway, then playerBack",
        )
        .await;
        for page in [page_a, page_b] {
            let _ = tokio::time::timeout(WAIT, page.close()).await;
        }
    };
    within_two_minutes(&logs, "browser resume test", test).await;
}

/// Player accounts in the playground, against two nodes with `--auth
/// required`: pages A (node a, alice) and B (node b, bob) present their
/// tokens, join one passphrase, see `ready`, and each labels the other's
/// tank with its user id. Neither token shows in the raw frames (the `auth`
/// frame shows "…"), in storage or in the URL. Page C, without a token, is
/// refused with `token_required`, shows it, and does not reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_with_player_tokens_show_each_others_user_id() {
    let driver = Chromedriver::start();
    let relays = Relays::redis_with(&["--auth", "required", "--auth-hs256-secret", AUTH_SECRET]);
    let logs = relays.logs();
    let test = async {
        let passphrase = format!("browser-accounts-{}", support::unique());
        let alice = player_token("alice");
        let bob = player_token("bob");
        let page_a = driver.browser().await;
        let page_b = driver.browser().await;
        open_and_join_as(&page_a, relays.addr_a(), &passphrase, Some(&alice)).await;
        wait_js(
            &page_a,
            "const s = window.playground.state; return s.seat === 1 && s.user === 'alice'",
            "page A is signed in as alice and holds seat 1",
        )
        .await;
        open_and_join_as(&page_b, relays.addr_b(), &passphrase, Some(&bob)).await;
        for (page, name) in [(&page_a, "A"), (&page_b, "B")] {
            wait_js(
                page,
                "const s = window.playground.state;
                 return s.ready && s.events.includes('ready')
                     && s.users[1] === 'alice' && s.users[2] === 'bob'",
                &format!("page {name} sees ready, with both user ids"),
            )
            .await;
        }
        // Each page labels both tanks: itself as "you", the other by seat,
        // each with its user id; the lobby events name them too.
        for (page, mine, theirs) in [
            (&page_a, "[1, 'you (alice)']", "[2, 'P2 (bob)']"),
            (&page_b, "[2, 'you (bob)']", "[1, 'P1 (alice)']"),
        ] {
            wait_js(
                page,
                &format!(
                    "const p = window.playground, [m, me] = {mine}, [o, other] = {theirs};
                     const ready = document.querySelector('#events li.ready');
                     return p.tankLabel(m) === me && p.tankLabel(o) === other
                         && p.state.tanks[o] !== undefined
                         && ready !== null && ready.textContent.includes('seat 1: alice, seat 2: bob')
                         && document.getElementById('account-user').textContent.includes(me.slice(5, -1))"
                ),
                &format!("the page labels {mine} and {theirs}"),
            )
            .await;
        }
        screenshot(&page_a, "playground-accounts.png", false).await;
        // A resume is on a new connection too: A's dropped connection is
        // taken back after presenting the token again (`auth`, then
        // `resume`), and the labels stay.
        let dropped = bounded(
            "drop A's connection",
            page_a.execute("return window.playground.dropConnection()", vec![]),
        )
        .await;
        assert_eq!(dropped, json!(true), "page A had a connection to drop");
        wait_js(
            &page_a,
            "const s = window.playground.state;
             const out = [...document.querySelectorAll('#frames .out')].map(l => l.textContent);
             const auths = out.filter(t => t.includes('{\"type\":\"auth\",'));
             const lastAuth = out.findLastIndex(t => t.includes('{\"type\":\"auth\",'));
             const lastResume = out.findLastIndex(t => t.includes('{\"type\":\"resume\",'));
             return s.events.includes('resumed') && !s.reconnecting && s.user === 'alice'
                 && auths.length === 2 && lastResume > lastAuth
                 && window.playground.tankLabel(2) === 'P2 (bob)'",
            "page A resumes after presenting its token again",
        )
        .await;
        // The tokens went out in `auth` frames shown as "…", and nowhere
        // else: not the panel (what Copy copies), storage, URL or markup.
        for (page, token) in [(&page_a, &alice), (&page_b, &bob)] {
            let leaks = bounded(
                "look for the token",
                page.execute(
                    "const token = arguments[0];
                     const frames = document.getElementById('frames').textContent;
                     return {
                         authFrame: frames.includes('{\"type\":\"auth\",\"token\":\"…\"}'),
                         inFrames: frames.includes(token),
                         inStorage: localStorage.length + sessionStorage.length > 0,
                         inUrl: location.href.includes(token),
                         inMarkup: document.documentElement.outerHTML.includes(token),
                     };",
                    vec![json!(token)],
                ),
            )
            .await;
            assert_eq!(
                leaks,
                json!({"authFrame": true, "inFrames": false, "inStorage": false,
                       "inUrl": false, "inMarkup": false}),
                "the token shows only as … in the auth frame"
            );
        }

        // C has no token: the relay refuses the join and closes with 1008;
        // the page says so and stays closed (no reconnect loop).
        let page_c = driver.browser().await;
        open_and_join_as(&page_c, relays.addr_a(), &passphrase, None).await;
        wait_js(
            &page_c,
            "const s = window.playground.state, box = document.getElementById('auth-error');
             return s.authError !== null && s.authError.code === 'token_required'
                 && s.socket === 'closed' && s.lastClose.code === 1008
                 && !box.hidden && box.textContent.includes('token_required')
                 && document.getElementById('account').open",
            "page C shows token_required",
        )
        .await;
        // Longer than any reconnect delay of the page (1 s after 1006).
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let after = bounded(
            "read C's state",
            page_c.execute(
                "const s = window.playground.state;
                 return [s.socket, s.seat, s.events.filter(e => e === 'close').length,
                         document.querySelectorAll('#frames .out').length > 0];",
                vec![],
            ),
        )
        .await;
        assert_eq!(
            after,
            json!(["closed", null, 1, true]),
            "page C stays closed after token_required"
        );
        for page in [page_a, page_b, page_c] {
            let _ = tokio::time::timeout(WAIT, page.close()).await;
        }
    };
    within_two_minutes(&logs, "browser player-account test", test).await;
}

/// The playground's Join button (issue 19): disabled from the moment a join
/// is sent, while joined and while resuming (a second press would only get
/// `already_joined`); enabled again after Leave and after a refused join
/// (an invalid passphrase, a full lobby).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_join_button_is_disabled_while_joined_or_joining() {
    let driver = Chromedriver::start();
    let relays = Relays::memory();
    let logs = relays.logs();
    let test = async {
        let page = driver.browser().await;
        bounded(
            "open the playground",
            page.goto(&format!("http://{}/playground", relays.addr_a())),
        )
        .await;
        const BUTTONS: &str = "const s = window.playground.state;
             const join = document.getElementById('join').disabled ? 'disabled' : 'enabled';
             const leave = document.getElementById('leave').disabled ? 'disabled' : 'enabled';";
        wait_js(
            &page,
            &format!(
                "{BUTTONS} return s.socket === 'open' && join === 'enabled' && leave === 'disabled'"
            ),
            "a fresh page: Join enabled, Leave disabled",
        )
        .await;
        let input = bounded(
            "find the passphrase box",
            page.find(Locator::Id("passphrase")),
        )
        .await;
        // The click and the button's state in one script: the join is still
        // on its way (no seat yet) when the button is read.
        let passphrase = format!("join-button-{}", support::unique());
        retype(&input, &passphrase).await;
        let on_its_way = bounded(
            "click Join",
            page.execute(
                &format!(
                    "document.getElementById('join').click(); {BUTTONS} return [join, s.seat];"
                ),
                vec![],
            ),
        )
        .await;
        assert_eq!(
            on_its_way,
            json!(["disabled", null]),
            "Join is disabled while the join is on its way"
        );
        wait_js(
            &page,
            &format!("{BUTTONS} return s.seat === 1 && join === 'disabled' && leave === 'enabled'"),
            "joined: Join disabled, Leave enabled",
        )
        .await;
        // Enter in the passphrase box does not join a second time either.
        bounded(
            "press Enter in the passphrase box",
            input.send_keys(&Key::Enter.to_string()),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let sent = bounded(
            "count the joins sent",
            page.execute(
                "const s = window.playground.state;
                 const out = [...document.querySelectorAll('#frames .out')].map(l => l.textContent);
                 return [out.filter(t => t.includes('{\"type\":\"join\"')).length,
                         s.events.filter(e => e === 'error').length];",
                vec![],
            ),
        )
        .await;
        assert_eq!(sent, json!([1, 0]), "one join sent, no error");

        // Leave: Join is enabled again.
        let leave = bounded("find Leave", page.find(Locator::Id("leave"))).await;
        bounded("click Leave", leave.click()).await;
        wait_js(
            &page,
            &format!("{BUTTONS} return s.seat === null && s.events.includes('left') && join === 'enabled' && leave === 'disabled'"),
            "left: Join enabled, Leave disabled",
        )
        .await;

        // A join refused for its passphrase: enabled again.
        let join = bounded("find Join", page.find(Locator::Id("join"))).await;
        retype(&input, "x").await;
        bounded("click Join", join.click()).await;
        wait_js(
            &page,
            &format!("{BUTTONS} return s.events.filter(e => e === 'error').length === 1 && s.seat === null
                && join === 'enabled' && document.getElementById('frames').textContent.includes('invalid_passphrase')"),
            "invalid_passphrase: Join enabled again",
        )
        .await;

        // A join refused because the lobby is full: enabled again.
        let full = format!("join-button-full-{}", support::unique());
        let mut one = Client::connect(&relays.url_a(), "one").await;
        let mut two = Client::connect(&relays.url_a(), "two").await;
        one.join(&full).await;
        two.join(&full).await;
        retype(&input, &full).await;
        bounded("click Join", join.click()).await;
        wait_js(
            &page,
            &format!("{BUTTONS} return s.events.filter(e => e === 'error').length === 2 && s.seat === null
                && join === 'enabled' && document.getElementById('frames').textContent.includes('lobby_full')"),
            "lobby_full: Join enabled again",
        )
        .await;

        // Resume: disabled while the page takes its seat back, and after.
        let resumable = format!("join-button-resume-{}", support::unique());
        retype(&input, &resumable).await;
        bounded("click Join", join.click()).await;
        wait_js(
            &page,
            &format!("{BUTTONS} return s.seat === 1 && s.resumable && join === 'disabled'"),
            "joined with resume: Join disabled",
        )
        .await;
        let dropped = bounded(
            "drop the connection",
            page.execute("return window.playground.dropConnection(60000)", vec![]),
        )
        .await;
        assert_eq!(dropped, json!(true), "the page had a connection to drop");
        wait_js(
            &page,
            &format!(
                "{BUTTONS} return s.reconnecting && join === 'disabled' && leave === 'enabled'"
            ),
            "resuming: Join disabled",
        )
        .await;
        bounded(
            "restore the network",
            page.execute("return window.playground.restoreNetwork()", vec![]),
        )
        .await;
        wait_js(
            &page,
            &format!("{BUTTONS} return s.events.includes('resumed') && !s.reconnecting && s.seat === 1 && join === 'disabled'"),
            "resumed: Join still disabled",
        )
        .await;
        bounded("click Leave", leave.click()).await;
        wait_js(
            &page,
            &format!(
                "{BUTTONS} return s.seat === null && join === 'enabled' && leave === 'disabled'"
            ),
            "left after the resume: Join enabled",
        )
        .await;
        let errors = bounded(
            "read the errors",
            page.execute(
                "return window.playground.state.events.filter(e => e === 'error').length",
                vec![],
            ),
        )
        .await;
        assert_eq!(errors, json!(2), "no already_joined on the way");
        let _ = tokio::time::timeout(WAIT, page.close()).await;
    };
    within_two_minutes(&logs, "browser Join button test", test).await;
}

/// Quick match: two pages, one per node, press "Quick match" and meet in one
/// lobby of the queue "playground" (both see `ready` and the other's
/// tank); seat 1 wears the host's crown in both, and the host chip says
/// so. When the host leaves, the other page hears `hostChanged` and its
/// crown moves to seat 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pages_quick_match_and_show_the_host() {
    let driver = Chromedriver::start();
    let relays = Relays::redis();
    let logs = relays.logs();
    let test = async {
        let page_a = driver.browser().await;
        let page_b = driver.browser().await;
        for (page, addr, name, seat) in [
            (&page_a, relays.addr_a(), "A", 1),
            (&page_b, relays.addr_b(), "B", 2),
        ] {
            bounded(
                "open the playground",
                page.goto(&format!("http://{addr}/playground")),
            )
            .await;
            wait_js(
                page,
                "return window.playground.state.socket === 'open'
                    && !document.getElementById('quick-match').disabled",
                &format!("page {name} is connected, Quick match enabled"),
            )
            .await;
            let button = bounded("find Quick match", page.find(Locator::Id("quick-match"))).await;
            bounded("click Quick match", button.click()).await;
            wait_js(
                page,
                &format!(
                    "const s = window.playground.state;
                     return s.seat === {seat} && s.queue === 'playground'
                         && document.getElementById('quick-match').disabled
                         && document.getElementById('join').disabled"
                ),
                &format!("page {name} is seated in the queue's lobby, seat {seat}"),
            )
            .await;
        }
        for (page, name, other) in [(&page_a, "A", 2), (&page_b, "B", 1)] {
            wait_js(
                page,
                &format!(
                    "const p = window.playground, s = p.state;
                     const sent = [...document.querySelectorAll('#frames .out')].map(l => l.textContent);
                     return s.ready && s.events.includes('ready') && s.tanks[{other}] !== undefined
                         && s.host === 1 && s.epoch === 1
                         && p.hostMark(1) === '♛ host' && p.hostMark(2) === ''
                         && document.getElementById('host').textContent.includes('seat 1')
                         && sent.some(t => t.includes('{{\"type\":\"join\",\"queue\":\"playground\",\"resume\":true,\"host\":true,\"spectators\":true}}'))"
                ),
                &format!("page {name} sees ready, the other tank, and the crown on seat 1"),
            )
            .await;
        }
        screenshot(&page_b, "playground-quick-match.png", false).await;

        // Watch with the passphrase box empty: the queue's latest game.
        let page_c = driver.browser().await;
        bounded(
            "open the playground",
            page_c.goto(&format!("http://{}/playground", relays.addr_b())),
        )
        .await;
        wait_js(
            &page_c,
            "return window.playground.state.socket === 'open' && !document.getElementById('watch').disabled",
            "page C is connected, Watch enabled",
        )
        .await;
        let watch = bounded("find Watch", page_c.find(Locator::Id("watch"))).await;
        bounded("click Watch", watch.click()).await;
        wait_js(
            &page_c,
            "const s = window.playground.state;
             const sent = [...document.querySelectorAll('#frames .out')].map(l => l.textContent);
             return s.watching && s.queue === 'playground' && s.players === 2 && s.host === 1
                 && sent.some(t => t.includes('{\"type\":\"join\",\"queue\":\"playground\",\"spectate\":true'))",
            "page C watches the queue's game",
        )
        .await;
        let _ = tokio::time::timeout(WAIT, page_c.close()).await;

        // The host leaves: B hears hostChanged, and the crown moves to B.
        let leave = bounded("find Leave", page_a.find(Locator::Id("leave"))).await;
        bounded("click Leave", leave.click()).await;
        wait_js(
            &page_b,
            "const p = window.playground, s = p.state;
             return s.events.includes('hostChanged') && s.host === 2 && s.epoch === 2
                 && p.hostMark(2) === '♛ host' && p.hostMark(1) === ''
                 && document.getElementById('host').textContent.includes('seat 2 (you)')",
            "page B is host after A left, epoch 2",
        )
        .await;
        let hosts = bounded(
            "read page A's host",
            page_a.execute("return window.playground.state.host", vec![]),
        )
        .await;
        assert_eq!(hosts, Value::Null, "page A left: no host shown");
        screenshot(&page_b, "playground-host-changed.png", false).await;
        for page in [page_a, page_b] {
            let _ = tokio::time::timeout(WAIT, page.close()).await;
        }
    };
    within_two_minutes(&logs, "quick match test", test).await;
}

/// Presses the arrow `key` `times` times in `page`'s arena.
async fn press(page: &Browser, key: Key, times: usize) {
    let arena = bounded("find the arena", page.find(Locator::Id("arena"))).await;
    bounded("focus the arena", arena.click()).await;
    bounded(
        "press an arrow",
        arena.send_keys(&key.to_string().repeat(times)),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_page_watches_both_tanks_move() {
    let driver = Chromedriver::start();
    let relays = Relays::redis();
    let logs = relays.logs();
    let test = async {
        let passphrase = format!("browser-watch-{}", support::unique());
        let page_a = driver.browser().await;
        let page_b = driver.browser().await;
        open_and_join(&page_a, relays.addr_a(), &passphrase).await;
        wait_js(
            &page_a,
            "return window.playground.state.seat === 1",
            "page A holds seat 1",
        )
        .await;
        open_and_join(&page_b, relays.addr_a(), &passphrase).await;
        for (page, name) in [(&page_a, "A"), (&page_b, "B")] {
            wait_js(
                page,
                "return window.playground.state.ready",
                &format!("page {name} sees ready"),
            )
            .await;
        }

        // The spectator, on node b: the passphrase, then Watch.
        let page_s = driver.browser().await;
        bounded(
            "open the playground",
            page_s.goto(&format!("http://{}/playground", relays.addr_b())),
        )
        .await;
        wait_js(
            &page_s,
            "return window.playground.state.socket === 'open' && !document.getElementById('watch').disabled",
            "page S is connected, Watch enabled",
        )
        .await;
        let input = bounded(
            "find the passphrase box",
            page_s.find(Locator::Id("passphrase")),
        )
        .await;
        bounded("type the passphrase", input.send_keys(&passphrase)).await;
        let watch = bounded("find Watch", page_s.find(Locator::Id("watch"))).await;
        bounded("click Watch", watch.click()).await;
        wait_js(
            &page_s,
            "const s = window.playground.state;
             return s.watching && s.seat === null && s.players === 2 && s.events.includes('watching')
                 && document.getElementById('watch').disabled && document.getElementById('join').disabled
                 && !document.getElementById('leave').disabled",
            "page S watches",
        )
        .await;
        // The players are told (at most a second later) and show it; their
        // tanks are sent again for the newcomer.
        wait_js(
            &page_a,
            "const s = window.playground.state;
             return s.spectators === 1 && document.getElementById('spectators').textContent === 'spectators: 1 watching'",
            "page A shows 1 watching",
        )
        .await;
        wait_js(
            &page_s,
            "const s = window.playground.state;
             return s.tanks[1] !== undefined && s.tanks[2] !== undefined
                 && document.getElementById('spectators').textContent === 'spectators: watching (1 spectators)'",
            "page S draws both tanks and shows watching (1 spectators)",
        )
        .await;

        // A moves right, B moves left: S sees both move.
        let (a_before, b_before) = (
            tank_x(&page_s, 1).await.expect("tank 1 on page S"),
            tank_x(&page_s, 2).await.expect("tank 2 on page S"),
        );
        press(&page_a, Key::Right, 4).await;
        press(&page_b, Key::Left, 3).await;
        let want_a = tank_x(&page_a, 1).await.expect("A's own tank");
        let want_b = tank_x(&page_b, 2).await.expect("B's own tank");
        assert!(want_a > a_before && want_b < b_before, "the players moved");
        wait_js(
            &page_s,
            &format!(
                "const t = window.playground.state.tanks;
                 return t[1] && t[2] && t[1].x === {want_a} && t[2].x === {want_b}"
            ),
            "page S sees both tanks where the players put them",
        )
        .await;

        // The spectator's keys move nothing and send nothing.
        press(&page_s, Key::Up, 3).await;
        let arena = bounded("find the arena", page_s.find(Locator::Id("arena"))).await;
        bounded("shoot", arena.send_keys(" ")).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let after = bounded(
            "read S's state",
            page_s.execute(
                "const s = window.playground.state;
                 return [[...document.querySelectorAll('#frames .out')]
                            .filter(l => !l.textContent.includes('\"ping\"')).length,
                         Object.keys(s.tanks).length, s.shots.length, s.tanks[1].x, s.tanks[2].x]",
                vec![],
            ),
        )
        .await;
        assert_eq!(after[0], 1, "S sent its watch only (pings aside): {after}");
        assert_eq!(after[1], 2, "S has no tank of its own: {after}");
        assert_eq!(after[2], 0, "S fired nothing: {after}");
        assert_eq!(
            (after[3].as_f64(), after[4].as_f64()),
            (Some(want_a), Some(want_b)),
            "{after}"
        );
        assert_eq!(
            (tank_x(&page_a, 1).await, tank_x(&page_b, 2).await),
            (Some(want_a), Some(want_b)),
            "the players' tanks did not move"
        );
        screenshot(&page_s, "playground-watching.png", false).await;
        for page in [page_a, page_b, page_s] {
            let _ = tokio::time::timeout(WAIT, page.close()).await;
        }
    };
    within_two_minutes(&logs, "watching test", test).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_view_refuses_a_missing_or_wrong_token() {
    // Without --admin-token there is no admin view at all.
    let plain = Relays::memory();
    assert_eq!(http_get(plain.addr_a(), "/admin", &[]).0, 404);
    assert_eq!(http_get(plain.addr_a(), "/admin/api/cluster", &[]).0, 404);
    let bearer = format!("Authorization: Bearer {TOKEN}");
    assert_eq!(
        http_get(plain.addr_a(), "/admin/api/cluster", &[&bearer]).0,
        404
    );
    drop(plain);

    let c = Relays::memory_with(&["--admin-token", TOKEN]);
    let addr = c.addr_a();
    let (status, head, body) = http_get(addr, "/admin/api/cluster", &[]);
    assert_eq!(status, 401, "{body}");
    assert!(head.contains("www-authenticate: bearer"), "{head}");
    for wrong in [
        "Authorization: Bearer browser-test-admin-tokeN",
        "Authorization: Bearer browser-test-admin-token-and-more",
        "Authorization: Basic YWRtaW46YWRtaW4=",
        "Authorization: browser-test-admin-token",
    ] {
        assert_eq!(
            http_get(addr, "/admin/api/cluster", &[wrong]).0,
            401,
            "{wrong}"
        );
    }
    // The right token: this one node and its lobby, by hash prefix only.
    let passphrase = format!("admin-memory-{}", support::unique());
    let mut player = Client::connect(&c.url_a(), "P").await;
    player.join(&passphrase).await;
    let (status, head, body) = http_get(addr, "/admin/api/cluster", &[&bearer]);
    assert_eq!(status, 200, "{body}");
    assert!(head.contains("content-type: application/json"), "{head}");
    let view: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(view["store"], "memory");
    assert_eq!(view["nodes"][0]["node"], "a");
    assert_eq!(view["nodes"][0]["stats"]["connections"], 1);
    let hex = support::lobby_id(&passphrase);
    assert_eq!(view["lobbies"][0]["lobby"], json!(&hex[..8]));
    assert_eq!(view["lobbies"][0]["seats"][0]["node"], "a");
    assert!(!body.contains(&hex), "only a prefix of the lobby id");
    assert!(!body.contains(&passphrase));
    // The page itself is static; it asks for the token, and refuses a
    // wrong one in the browser too.
    let (status, _, page) = http_get(addr, "/admin", &[]);
    assert_eq!(status, 200);
    assert!(page.contains("/admin/api/cluster"));

    let driver = Chromedriver::start();
    let browser = driver.browser().await;
    bounded(
        "open the admin view without a token",
        browser.goto(&format!("http://{addr}/admin")),
    )
    .await;
    wait_js(
        &browser,
        "return !document.getElementById('login').hidden",
        "the page asks for the token",
    )
    .await;
    bounded(
        "open the admin view with a wrong token",
        browser.goto(&format!("http://{addr}/admin#token=not-the-token-at-all")),
    )
    .await;
    bounded("reload", browser.refresh()).await;
    wait_js(
        &browser,
        "return !document.getElementById('login').hidden
            && document.getElementById('login-hint').textContent.includes('refused')
            && document.getElementById('nodes-section').hidden",
        "the page says the token was refused and shows nothing",
    )
    .await;
    let _ = tokio::time::timeout(WAIT, browser.close()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_playground_is_served_and_can_be_turned_off() {
    // On (the default): GET / and /playground serve the page, with the node id.
    // The page is built on the JS client, which its CSP lets it load from its
    // own origin; its one inline script runs by hash, no other would.
    let on = Relays::memory();
    for path in ["/", "/playground"] {
        let (status, head, body) = http_get(on.addr_a(), path, &[]);
        assert_eq!(status, 200, "GET {path}");
        assert!(head.contains("content-type: text/html"), "{head}");
        let csp = head
            .lines()
            .find_map(|l| l.strip_prefix("content-security-policy: "))
            .unwrap_or_else(|| panic!("no CSP in {head}"));
        assert!(csp.contains("script-src 'self' 'sha256-"), "{csp}");
        assert!(csp.contains("connect-src 'self'"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        let script_src = csp.split(';').find(|d| d.contains("script-src")).unwrap();
        assert!(!script_src.contains("unsafe"), "{csp}");
        assert!(body.contains("lobby-relay playground"));
        assert!(body.contains(r#"<meta name="lobby-relay-node" content="a">"#));
        assert!(body.contains(r#"import { LobbyRelayClient } from "/client/v1.js";"#));
    }
    // Without an upgrade, /ws stays a WebSocket endpoint only.
    assert_eq!(http_get(on.addr_a(), "/ws", &[]).0, 426);
    drop(on);

    // Off: /playground is 404, / is as it always was (426 without an
    // upgrade), and the WebSocket works on both paths.
    let off = Relays::memory_with(&["--playground", "off"]);
    let addr = off.addr_a();
    assert_eq!(http_get(addr, "/playground", &[]).0, 404);
    assert_eq!(http_get(addr, "/", &[]).0, 426);
    assert_eq!(http_get(addr, "/ws", &[]).0, 426);
    assert_eq!(http_get(addr, "/healthz", &[]).0, 200);
    let passphrase = format!("no-playground-{}", support::unique());
    let mut a = Client::connect(&format!("ws://{addr}/"), "A").await;
    let mut b = Client::connect(&format!("ws://{addr}/ws"), "B").await;
    a.join(&passphrase).await;
    b.join(&passphrase).await;
    a.expect_json(json!({"type": "ready", "players": 2})).await;
    b.expect_json(json!({"type": "ready", "players": 2})).await;
    a.send_text(r#"{"type":"playerMove","seat":1,"x":1,"y":2}"#)
        .await;
    b.expect_text(r#"{"type":"playerMove","seat":1,"x":1,"y":2}"#)
        .await;
}

/// The JavaScript client is served with the playground: `/client.js` and
/// `/client/v1.js`, the repository's file byte for byte, as a JavaScript
/// module any origin may import (CORS), cached briefly; with `--playground
/// off`, 404 like the playground.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_js_client_is_served_with_the_playground() {
    const FILE: &str = include_str!("../clients/js/lobby-relay.js");
    let on = Relays::memory();
    for path in ["/client.js", "/client/v1.js"] {
        let (status, head, body) = http_get(on.addr_a(), path, &[]);
        assert_eq!(status, 200, "GET {path}");
        for header in [
            "content-type: text/javascript; charset=utf-8",
            "cache-control: public, max-age=300",
            "access-control-allow-origin: *",
            "x-content-type-options: nosniff",
        ] {
            assert!(head.contains(header), "GET {path}: no {header:?} in {head}");
        }
        assert!(
            body == FILE,
            "GET {path}: not the repository's clients/js/lobby-relay.js"
        );
    }
    drop(on);
    let off = Relays::memory_with(&["--playground", "off"]);
    for path in ["/client.js", "/client/v1.js"] {
        assert_eq!(http_get(off.addr_a(), path, &[]).0, 404, "GET {path}");
    }
}

/// The JavaScript client in Chromium. A page of the relay's origin (node a;
/// its `/healthz` is a plain-text page without a Content-Security-Policy)
/// imports `/client.js`, joins with `sessionStorage` as its storage, and
/// plays with a peer on node b: JSON from the page, text and bytes from the
/// peer. The page is reloaded: the new page's client joins the same
/// passphrase, finds the kept token and takes seat 1 back (`resumed`), with
/// the message the peer sent while the page was away; the peer saw
/// `playerAway` and `playerBack`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_js_client_plays_in_a_page_and_resumes_after_a_reload() {
    // Imports the client, joins `pass` at `url` with sessionStorage, and
    // logs its events in window.log; answers the join's message or error.
    const JOIN: &str = "const [url, pass, done] = arguments;
        import('/client.js').then(({ LobbyRelayClient }) => {
            const log = window.log = [];
            const client = window.client = new LobbyRelayClient(url, { storage: sessionStorage });
            for (const name of ['joined', 'ready', 'resumed', 'reconnecting', 'seatLost', 'error']) {
                client.on(name, () => log.push(name));
            }
            client.on('message', (m) => log.push(m.kind === 'binary' ? 'bytes:' + [...m.data].join(',') : 'json:' + m.text));
            return client.join(pass);
        }).then((m) => done(m), (e) => done('failed: ' + e));";
    let driver = Chromedriver::start();
    let relays = Relays::redis();
    let logs = relays.logs();
    let test = async {
        let pass = format!("browser-js-client-{}", support::unique());
        let url = relays.url_a();
        let page = driver.browser().await;
        let origin = format!("http://{}/healthz", relays.addr_a());
        bounded("open the relay's origin", page.goto(&origin)).await;
        let joined = bounded(
            "import /client.js and join",
            page.execute_async(JOIN, vec![json!(url), json!(pass)]),
        )
        .await;
        assert_eq!(joined["type"], "joined", "{joined}");
        assert_eq!(joined["seat"], 1, "{joined}");
        let mut peer = Client::connect(&relays.url_b(), "peer").await;
        peer.join(&pass).await;
        peer.expect_json(json!({"type": "ready", "players": 2}))
            .await;
        wait_js(
            &page,
            "return window.log.includes('ready')",
            "the page sees ready",
        )
        .await;

        bounded(
            "send from the page",
            page.execute("window.client.send({type: 'hello', from: 'page'})", vec![]),
        )
        .await;
        peer.expect_text(r#"{"type":"hello","from":"page"}"#).await;
        peer.send_text(r#"{"type":"hello", "from":"peer"}"#).await;
        peer.send_binary(vec![1, 2, 255]).await;
        wait_js(
            &page,
            r#"return window.log.includes('json:{"type":"hello", "from":"peer"}') && window.log.includes('bytes:1,2,255')"#,
            "the page gets the peer's text and bytes",
        )
        .await;

        // Reload: the page's connection ends without leave (the seat is
        // held); the peer plays on meanwhile.
        bounded("reload the page", page.refresh()).await;
        let away = peer.recv_json().await;
        assert_eq!(away["type"], "playerAway", "{away}");
        peer.send_text(r#"{"type":"during","n":1}"#).await;
        let resumed = bounded(
            "import /client.js again and join",
            page.execute_async(JOIN, vec![json!(url), json!(pass)]),
        )
        .await;
        assert_eq!(resumed["type"], "resumed", "{resumed}");
        assert_eq!(resumed["seat"], 1, "{resumed}");
        assert!(
            resumed["replayed"].as_u64().is_some_and(|n| n >= 1),
            "{resumed}"
        );
        peer.expect_json(json!({"type": "playerBack", "seat": 1}))
            .await;
        wait_js(
            &page,
            r#"return window.log.includes('json:{"type":"during","n":1}')"#,
            "the reloaded page gets what the peer sent meanwhile",
        )
        .await;
        bounded(
            "send from the reloaded page",
            page.execute("window.client.send({type: 'back'})", vec![]),
        )
        .await;
        peer.expect_text(r#"{"type":"back"}"#).await;
        let log = bounded("read the log", page.execute("return window.log", vec![])).await;
        assert_eq!(
            log,
            json!(["resumed", r#"json:{"type":"during","n":1}"#]),
            "the new page's events: resumed, then the replayed message, once"
        );
        let _ = tokio::time::timeout(WAIT, page.close()).await;
    };
    within_two_minutes(&logs, "browser JS client test", test).await;
}
