//! Unit tests of the webhook sink's header handling and of its health probe (against an axum
//! server on 127.0.0.1:0); delivery, retries and batching are tested against a real HTTP server
//! in `tests/conformance/`.

use super::*;

#[test]
fn retry_after_is_read_as_seconds_or_an_http_date() {
    let in_ten = (chrono::Utc::now() + chrono::Duration::seconds(10)).to_rfc2822();
    let cases: [(&str, Option<(u64, u64)>); 5] = [
        ("3", Some((3, 3))),
        (" 0 ", Some((0, 0))),
        (&in_ten, Some((8, 10))),
        ("Wed, 21 Oct 2015 07:28:00 GMT", Some((0, 0))),
        ("soon", None),
    ];
    for (value, expected) in cases {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_str(value).unwrap());
        let got = retry_after(&headers).map(|d| d.as_secs());
        match expected {
            Some((low, high)) => {
                let got = got.unwrap_or_else(|| panic!("{value}: not parsed"));
                assert!((low..=high).contains(&got), "{value}: {got}");
            }
            None => assert_eq!(got, None, "{value}"),
        }
    }
}

#[test]
fn signatures_are_hmac_sha256_in_lower_case_hex() {
    // RFC 4231 test case 2.
    assert_eq!(
        signature(b"Jefe", b"what do ya want for nothing?"),
        "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
}

#[test]
fn invalid_settings_are_rejected_when_the_sink_is_built() {
    let (acks, _rx) = tokio::sync::mpsc::channel(1);
    let mut bad_header = WebhookSinkConfig::new("hook", "http://127.0.0.1:9/");
    bad_header
        .headers
        .insert("bad header".into(), crate::Secret::new("v"));
    let mut zero = WebhookSinkConfig::new("hook", "http://127.0.0.1:9/");
    zero.max_in_flight = 0;
    let cases = [
        (bad_header, "header name `bad header`"),
        (zero, "at least 1"),
        (WebhookSinkConfig::new("hook", "::"), "url `::` is invalid"),
    ];
    for (config, expected) in cases {
        let error = WebhookSink::new(config, acks.clone())
            .unwrap_err()
            .to_string();
        assert!(error.contains(expected), "{error}");
    }
}

#[test]
fn header_values_are_masked_in_debug_output() {
    let mut config = WebhookSinkConfig::new("hook", "http://127.0.0.1:9/");
    config
        .headers
        .insert("x-functions-key".into(), crate::Secret::new("s3cr3t"));
    let (acks, _rx) = tokio::sync::mpsc::channel(1);
    let sink = WebhookSink::new(config, acks).unwrap();
    let printed = format!("{sink:?}");
    assert!(!printed.contains("s3cr3t"), "{printed}");
}

/// A server on 127.0.0.1:0 answering `HEAD /hook` with `status` (`/slow` after 10 s) and
/// remembering the `x-functions-key` header it got; `/post-only` has only a POST route.
async fn probe_server(
    status: Arc<std::sync::atomic::AtomicU16>,
    key: Arc<std::sync::Mutex<Option<String>>>,
) -> String {
    use std::sync::atomic::Ordering;
    let app = axum::Router::new()
        .route(
            "/hook",
            axum::routing::head(move |headers: HeaderMap| async move {
                *key.lock().unwrap() = headers
                    .get("x-functions-key")
                    .map(|v| v.to_str().unwrap().to_owned());
                axum::http::StatusCode::from_u16(status.load(Ordering::SeqCst)).unwrap()
            }),
        )
        .route("/post-only", axum::routing::post(|| async { "ok" }))
        .route(
            "/slow",
            axum::routing::head(|| async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                "late"
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

#[tokio::test]
async fn the_probe_is_a_head_request_down_on_5xx_429_timeouts_and_connection_errors() {
    use std::sync::atomic::{AtomicU16, Ordering};
    let status = Arc::new(AtomicU16::new(200));
    let key = Arc::new(std::sync::Mutex::new(None));
    let base = probe_server(Arc::clone(&status), Arc::clone(&key)).await;
    let config = |path: &str| {
        let mut config = WebhookSinkConfig::new("hook", format!("{base}{path}"));
        config.timeout = Duration::from_millis(300);
        config
            .headers
            .insert("x-functions-key".into(), crate::Secret::new("s3cr3t"));
        config
    };

    WebhookSink::probe(&config("/hook")).await.unwrap();
    assert_eq!(
        key.lock().unwrap().as_deref(),
        Some("s3cr3t"),
        "headers are sent"
    );
    for up in [204, 401, 404] {
        status.store(up, Ordering::SeqCst);
        WebhookSink::probe(&config("/hook"))
            .await
            .unwrap_or_else(|e| panic!("HTTP {up} is an answer: {e}"));
    }
    WebhookSink::probe(&config("/post-only"))
        .await
        .expect("405 from a POST-only receiver is up");

    for down in [503, 500, 429] {
        status.store(down, Ordering::SeqCst);
        let error = WebhookSink::probe(&config("/hook")).await.unwrap_err();
        assert!(
            error.to_string().starts_with(&format!(
                "sink `hook`: HTTP {down} from {base}/hook: a HEAD probe"
            )),
            "{error}"
        );
    }
    let error = WebhookSink::probe(&config("/slow")).await.unwrap_err();
    assert!(matches!(error, Error::Http { .. }), "a timeout: {error}");

    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut refused = config("/hook");
    refused.url = format!("http://{closed}/hook");
    let error = WebhookSink::probe(&refused).await.unwrap_err().to_string();
    assert!(
        error.contains("HTTP request to http://")
            && error.contains("check that the endpoint is reachable"),
        "{error}"
    );
}
