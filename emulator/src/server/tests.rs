//! The emulator through real fe2o3-amqp client links over loopback: TLS, CBS, authorisation, link
//! credit, owner levels and the receiver limit, each as Event Hubs behaves; and bad input (garbage
//! bytes, unknown addresses, bad filters, oversize messages) answered with an AMQP error, never a crash.

use fe2o3_amqp::connection::{Connection, ConnectionHandle};
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::session::{Session, SessionHandle};
use fe2o3_amqp_types::messaging::Body;
use fe2o3_amqp_types::messaging::annotations::OwnedKey;
use fe2o3_amqp_types::primitives::{Symbol, Value};

use super::*;
use crate::config::HubConfig;

#[tokio::test]
async fn amqps_speaks_tls_from_the_first_byte_like_event_hubs() {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_pem, key_pem) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_pem, certified.cert.pem()).unwrap();
    std::fs::write(&key_pem, certified.signing_key.serialize_pem()).unwrap();
    let emulator = Emulator::start(EmulatorConfig {
        amqp_listen: "127.0.0.1:0".parse().unwrap(),
        hubs: vec![HubConfig::new("hub", 1)],
        tls: Some(TlsFiles { cert_pem, key_pem }),
        ..EmulatorConfig::default()
    })
    .await
    .unwrap();
    assert!(
        !emulator
            .connection_string("hub")
            .contains("UseDevelopmentEmulator")
    );
    emulator
        .publish(
            "hub",
            PublishTarget::Partition("0".to_owned()),
            EventToPublish {
                body: Bytes::from_static(b"over tls"),
                ..EventToPublish::default()
            },
        )
        .unwrap();

    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(emulator.amqp_addr()).await.unwrap();
    let server_name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(client))
        .connect(server_name, tcp)
        .await
        .unwrap();
    let mut connection = Connection::builder()
        .container_id("tls-test")
        .hostname("localhost")
        .sasl_profile(SaslProfile::Plain {
            username: crate::DEFAULT_KEY_NAME.to_owned(),
            password: crate::DEFAULT_KEY_VALUE.to_owned(),
        })
        .open_with_stream(tls)
        .await
        .unwrap();
    let mut session = Session::begin(&mut connection).await.unwrap();
    let mut receiver = fe2o3_amqp::Receiver::attach(
        &mut session,
        "tls-receiver",
        "hub/ConsumerGroups/$Default/Partitions/0",
    )
    .await
    .unwrap();
    let delivery = receiver.recv::<Body<Value>>().await.unwrap();
    let Body::Data(sections) = delivery.body() else {
        panic!("expected a data body, got {:?}", delivery.body());
    };
    assert_eq!(sections[0].0.as_slice(), b"over tls");
    receiver.close().await.unwrap();
    session.end().await.unwrap();
    connection.close().await.unwrap();
    emulator.shutdown().await.unwrap();
}

fn emulator_config() -> EmulatorConfig {
    EmulatorConfig {
        amqp_listen: "127.0.0.1:0".parse().unwrap(),
        hubs: vec![HubConfig::new("hub", 2)],
        ..EmulatorConfig::default()
    }
}

fn publish_n(emulator: &RunningEmulator, partition: &str, n: usize) {
    for i in 0..n {
        emulator
            .publish(
                "hub",
                PublishTarget::Partition(partition.to_owned()),
                EventToPublish {
                    body: Bytes::from(format!("event {i}")),
                    ..EventToPublish::default()
                },
            )
            .unwrap();
    }
}

async fn connect(emulator: &RunningEmulator) -> (ConnectionHandle<()>, SessionHandle<()>) {
    let mut connection = Connection::builder()
        .container_id("test-client")
        .sasl_profile(SaslProfile::Anonymous)
        .open(format!("amqp://{}", emulator.amqp_addr()).as_str())
        .await
        .unwrap();
    let session = Session::begin(&mut connection).await.unwrap();
    (connection, session)
}

async fn put_token(session: &mut SessionHandle<()>, token: &str) -> Result<(), String> {
    let mut cbs = fe2o3_amqp_cbs::client::CbsClient::attach(session)
        .await
        .unwrap();
    let result = cbs
        .put_token(
            "sb://127.0.0.1/hub",
            fe2o3_amqp_cbs::token::CbsToken::new(
                token,
                hubroute_protocol::cbs::SAS_TOKEN_TYPE,
                None,
            ),
        )
        .await
        .map_err(|error| format!("{error:?}"));
    cbs.close().await.unwrap();
    result
}

fn token(key: &str, expiry: i64) -> String {
    SasKey::new(crate::DEFAULT_KEY_NAME, key)
        .sign("sb://127.0.0.1/hub", expiry)
        .as_str()
        .to_owned()
}

fn in_an_hour() -> i64 {
    chrono::Utc::now().timestamp() + 3600
}

const PARTITION_0: &str = "hub/ConsumerGroups/$Default/Partitions/0";

#[tokio::test]
async fn cbs_rejects_wrong_keys_and_expired_tokens_and_links_need_a_token() {
    let emulator = Emulator::start(emulator_config()).await.unwrap();
    publish_n(&emulator, "0", 1);
    let (mut connection, mut session) = connect(&emulator).await;

    let mut refused = fe2o3_amqp::Receiver::attach(&mut session, "no-token", PARTITION_0)
        .await
        .unwrap();
    let error = refused.recv::<Body<Value>>().await.unwrap_err();
    assert!(
        format!("{error:?}").contains("unauthorized-access")
            || format!("{error:?}").contains("UnauthorizedAccess"),
        "{error:?}"
    );

    let wrong = put_token(&mut session, &token("not-the-key", in_an_hour()))
        .await
        .unwrap_err();
    assert!(wrong.contains("401"), "{wrong}");
    let expired = put_token(&mut session, &token(crate::DEFAULT_KEY_VALUE, 1))
        .await
        .unwrap_err();
    assert!(expired.contains("401"), "{expired}");
    put_token(&mut session, &token(crate::DEFAULT_KEY_VALUE, in_an_hour()))
        .await
        .unwrap();

    let mut receiver = fe2o3_amqp::Receiver::attach(&mut session, "with-token", PARTITION_0)
        .await
        .unwrap();
    let delivery = receiver.recv::<Body<Value>>().await.unwrap();
    let annotations = delivery.message().message_annotations.as_ref().unwrap();
    assert_eq!(
        annotations
            .0
            .get(&OwnedKey::Symbol(Symbol::from("x-opt-sequence-number"))),
        Some(&Value::Long(0))
    );
    receiver.close().await.unwrap();
    session.end().await.unwrap();
    connection.close().await.unwrap();
    emulator.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_emulator_never_sends_beyond_the_granted_credit() {
    let emulator = Emulator::start(emulator_config()).await.unwrap();
    publish_n(&emulator, "1", 10);
    let (mut connection, mut session) = connect(&emulator).await;
    put_token(&mut session, &token(crate::DEFAULT_KEY_VALUE, in_an_hour()))
        .await
        .unwrap();
    let mut receiver = fe2o3_amqp::Receiver::builder()
        .name("manual-credit")
        .source("hub/ConsumerGroups/$Default/Partitions/1")
        .credit_mode(fe2o3_amqp::link::CreditMode::Manual)
        .attach(&mut session)
        .await
        .unwrap();
    let quiet = std::time::Duration::from_millis(300);
    assert!(
        tokio::time::timeout(quiet, receiver.recv::<Body<Value>>())
            .await
            .is_err(),
        "no credit, no delivery"
    );
    receiver.set_credit(3).await.unwrap();
    for _ in 0..3 {
        receiver.recv::<Body<Value>>().await.unwrap();
    }
    assert!(
        tokio::time::timeout(quiet, receiver.recv::<Body<Value>>())
            .await
            .is_err(),
        "a fourth delivery would exceed the credit of three"
    );
    receiver.set_credit(7).await.unwrap();
    for _ in 0..7 {
        receiver.recv::<Body<Value>>().await.unwrap();
    }
    receiver.close().await.unwrap();
    session.end().await.unwrap();
    connection.close().await.unwrap();
    emulator.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_sixth_receiver_without_owner_level_is_refused_and_an_owner_steals_the_partition() {
    let emulator = Emulator::start(emulator_config()).await.unwrap();
    publish_n(&emulator, "0", 1);
    let (mut connection, mut session) = connect(&emulator).await;
    put_token(&mut session, &token(crate::DEFAULT_KEY_VALUE, in_an_hour()))
        .await
        .unwrap();
    let mut receivers = Vec::new();
    for i in 0..5 {
        let mut receiver =
            fe2o3_amqp::Receiver::attach(&mut session, format!("plain-{i}"), PARTITION_0)
                .await
                .unwrap();
        receiver.recv::<Body<Value>>().await.unwrap();
        receivers.push(receiver);
    }
    let mut sixth = fe2o3_amqp::Receiver::attach(&mut session, "plain-5", PARTITION_0)
        .await
        .unwrap();
    let error = format!("{:?}", sixth.recv::<Body<Value>>().await.unwrap_err());
    assert!(
        error.contains("resource-limit-exceeded") || error.contains("ResourceLimitExceeded"),
        "{error}"
    );

    let mut properties = fe2o3_amqp_types::definitions::Fields::new();
    properties.insert(Symbol::from(hubroute_protocol::link::EPOCH), Value::Long(0));
    let mut owner = fe2o3_amqp::Receiver::builder()
        .name("owner")
        .source(PARTITION_0)
        .properties(properties)
        .attach(&mut session)
        .await
        .unwrap();
    owner.recv::<Body<Value>>().await.unwrap();
    for mut receiver in receivers {
        let error = format!("{:?}", receiver.recv::<Body<Value>>().await.unwrap_err());
        assert!(
            error.contains("stolen") || error.contains("Stolen"),
            "{error}"
        );
    }
    owner.close().await.unwrap();
    session.end().await.unwrap();
    connection.close().await.unwrap();
    emulator.shutdown().await.unwrap();
}

/// Attaches a receiver to `address` with `filter` as its selector filter and returns the error the
/// emulator answers with (the attach itself, or the first receive after it).
async fn refusal(session: &mut SessionHandle<()>, address: &str, filter: Option<&str>) -> String {
    let mut source = fe2o3_amqp_types::messaging::Source::builder().address(address);
    if let Some(filter) = filter {
        source = source.add_to_filter(
            Symbol::from(hubroute_protocol::link::SELECTOR_FILTER_KEY),
            serde_amqp::described::Described {
                descriptor: serde_amqp::descriptor::Descriptor::Code(
                    hubroute_protocol::link::SELECTOR_FILTER_CODE,
                ),
                value: Value::String(filter.to_owned()),
            },
        );
    }
    let attached = fe2o3_amqp::Receiver::builder()
        .name(format!("bad-{}", uuid::Uuid::new_v4()))
        .source(source.build())
        .attach(session)
        .await;
    match attached {
        Err(error) => format!("{error:?}"),
        Ok(mut receiver) => {
            let received = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                receiver.recv::<Body<Value>>(),
            )
            .await
            .expect("the refusal arrives within 5 s");
            format!(
                "{:?}",
                received.expect_err("no delivery from a refused link")
            )
        }
    }
}

#[tokio::test]
async fn bad_input_gets_an_amqp_error_and_the_emulator_keeps_serving() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let emulator = Emulator::start(emulator_config()).await.unwrap();
    publish_n(&emulator, "0", 1);

    let mut garbage = TcpStream::connect(emulator.amqp_addr()).await.unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        garbage.read_to_end(&mut answer),
    )
    .await
    .expect("a non-AMQP peer is disconnected")
    .ok();
    assert!(
        answer.is_empty() || answer.starts_with(b"AMQP"),
        "at most a protocol header comes back: {answer:?}"
    );

    // SASL PLAIN with the root key authorises the whole namespace, so an unknown hub is not-found.
    let mut connection = Connection::builder()
        .container_id("bad-input")
        .sasl_profile(SaslProfile::Plain {
            username: crate::DEFAULT_KEY_NAME.to_owned(),
            password: crate::DEFAULT_KEY_VALUE.to_owned(),
        })
        .open(format!("amqp://{}", emulator.amqp_addr()).as_str())
        .await
        .unwrap();
    let mut session = Session::begin(&mut connection).await.unwrap();
    let cases = [
        (
            "nohub/ConsumerGroups/$Default/Partitions/0",
            None,
            "not-found",
        ),
        (
            "hub/ConsumerGroups/$Default/Partitions/9",
            None,
            "not-found",
        ),
        (
            PARTITION_0,
            Some("amqp.annotation.x-opt-offset > "),
            "argument",
        ),
        (
            PARTITION_0,
            Some("amqp.annotation.x-opt-color = 'red'"),
            "argument",
        ),
    ];
    for (address, filter, expected) in cases {
        let error = refusal(&mut session, address, filter).await;
        let normalised = error.to_lowercase().replace(['-', '_'], "");
        assert!(
            normalised.contains(&expected.replace('-', "")),
            "{address} {filter:?}: {error}"
        );
    }

    let mut sender = fe2o3_amqp::Sender::attach(&mut session, "oversize", "hub/Partitions/1")
        .await
        .unwrap();
    let outcome = sender
        .send(
            Message::builder()
                .data(fe2o3_amqp_types::primitives::Binary::from(vec![
                    0u8;
                    1024 * 1024
                        + 1
                ]))
                .build(),
        )
        .await;
    let outcome = format!("{outcome:?}")
        .to_lowercase()
        .replace(['-', '_'], "");
    assert!(outcome.contains("messagesizeexceeded"), "{outcome}");

    let mut receiver = fe2o3_amqp::Receiver::attach(&mut session, "still-serving", PARTITION_0)
        .await
        .unwrap();
    let delivery = receiver.recv::<Body<Value>>().await.unwrap();
    assert!(matches!(delivery.body(), Body::Data(_)));
    receiver.close().await.unwrap();
    session.end().await.unwrap();
    connection.close().await.unwrap();
    emulator.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_link_ends_when_its_token_expires_unless_a_new_token_is_put_in_time() {
    let emulator = Emulator::start(emulator_config()).await.unwrap();
    publish_n(&emulator, "0", 1);
    let soon = || chrono::Utc::now().timestamp() + 2;

    let (mut renewing, mut renewing_session) = connect(&emulator).await;
    put_token(
        &mut renewing_session,
        &token(crate::DEFAULT_KEY_VALUE, soon()),
    )
    .await
    .unwrap();
    let mut kept = fe2o3_amqp::Receiver::attach(&mut renewing_session, "kept", PARTITION_0)
        .await
        .unwrap();
    let (mut lapsing, mut lapsing_session) = connect(&emulator).await;
    put_token(
        &mut lapsing_session,
        &token(crate::DEFAULT_KEY_VALUE, soon()),
    )
    .await
    .unwrap();
    let mut dropped = fe2o3_amqp::Receiver::attach(&mut lapsing_session, "dropped", PARTITION_0)
        .await
        .unwrap();
    kept.recv::<Body<Value>>().await.unwrap();
    dropped.recv::<Body<Value>>().await.unwrap();

    put_token(
        &mut renewing_session,
        &token(crate::DEFAULT_KEY_VALUE, in_an_hour()),
    )
    .await
    .unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    publish_n(&emulator, "0", 1);
    kept.recv::<Body<Value>>()
        .await
        .expect("a renewed token keeps the link");
    let error = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        dropped.recv::<Body<Value>>(),
    )
    .await
    .expect("the expired link is closed promptly")
    .expect_err("no delivery after expiry");
    let error = format!("{error:?}").to_lowercase().replace(['-', '_'], "");
    assert!(error.contains("unauthorizedaccess"), "{error}");

    kept.close().await.unwrap();
    renewing_session.end().await.unwrap();
    renewing.close().await.unwrap();
    let _ = lapsing_session.end().await;
    let _ = lapsing.close().await;
    emulator.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_flood_of_links_is_answered_and_the_emulator_keeps_serving() {
    let emulator = Emulator::start(emulator_config()).await.unwrap();
    publish_n(&emulator, "1", 1);
    let (mut connection, mut session) = connect(&emulator).await;
    // 100 refused attaches (no token) in a row on one session: each gets its error, none leaks.
    for i in 0..100 {
        let error = refusal(&mut session, PARTITION_0, None).await;
        assert!(
            error
                .to_lowercase()
                .replace(['-', '_'], "")
                .contains("unauthorizedaccess"),
            "attach {i}: {error}"
        );
    }
    // 50 concurrent authorised links to one partition on one connection: each gets an answer.
    put_token(&mut session, &token(crate::DEFAULT_KEY_VALUE, in_an_hour()))
        .await
        .unwrap();
    let mut receivers = Vec::new();
    for i in 0..50 {
        let partition_1 = "hub/ConsumerGroups/$Default/Partitions/1";
        match fe2o3_amqp::Receiver::attach(&mut session, format!("flood-{i}"), partition_1).await {
            Ok(receiver) => receivers.push(receiver),
            Err(error) => panic!("attach {i}: {error:?}"),
        }
    }
    let mut delivered = 0;
    let mut refused = 0;
    for receiver in &mut receivers {
        match tokio::time::timeout(
            std::time::Duration::from_secs(5),
            receiver.recv::<Body<Value>>(),
        )
        .await
        .expect("every link hears back")
        {
            Ok(_) => delivered += 1,
            Err(_) => refused += 1,
        }
    }
    assert_eq!(
        (delivered, refused),
        (5, 45),
        "five non-epoch receivers per partition and consumer group, the rest refused"
    );
    let _ = session.end().await;
    let _ = connection.close().await;

    let (mut again, mut again_session) = connect(&emulator).await;
    put_token(
        &mut again_session,
        &token(crate::DEFAULT_KEY_VALUE, in_an_hour()),
    )
    .await
    .unwrap();
    let mut receiver = fe2o3_amqp::Receiver::attach(&mut again_session, "after-flood", PARTITION_0)
        .await
        .unwrap();
    publish_n(&emulator, "0", 1);
    receiver.recv::<Body<Value>>().await.unwrap();
    receiver.close().await.unwrap();
    again_session.end().await.unwrap();
    again.close().await.unwrap();
    emulator.shutdown().await.unwrap();
}
