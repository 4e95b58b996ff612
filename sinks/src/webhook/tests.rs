//! Unit tests of the webhook sink's header handling; delivery, retries and batching are tested
//! against a real HTTP server in `tests/conformance/`.

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
