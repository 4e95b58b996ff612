//! Tests of the PostgreSQL sink against the real server at 127.0.0.1:5432 (user `postgres`, trust
//! auth, database `test`). Each test uses its own table and drops it afterwards.

use std::time::Duration;

use hubroute_message::{Message, MessageBatchBuilder};
use tokio::sync::mpsc;

use super::*;
use tokio_postgres::NoTls;

use crate::{Ack, ColumnMapping, FlushReason, Sink, SinkBatch, TableConfig};

const START_POSTGRES: &str = "PostgreSQL is not reachable at 127.0.0.1:5432 (user postgres, database test); \
     start PostgreSQL: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start";

async fn admin() -> Client {
    let (client, connection) =
        tokio_postgres::connect("host=127.0.0.1 port=5432 user=postgres dbname=test", NoTls)
            .await
            .unwrap_or_else(|error| panic!("{START_POSTGRES}: {error}"));
    tokio::spawn(connection);
    client
}

/// A unique table name, dropped when the guard goes.
struct TestTable {
    name: String,
}

impl TestTable {
    async fn new(test: &str) -> Self {
        let name = format!("hr_sinksb_{test}_{}", uuid::Uuid::new_v4().simple());
        admin()
            .await
            .batch_execute(&format!("DROP TABLE IF EXISTS \"{name}\""))
            .await
            .unwrap();
        Self { name }
    }

    async fn count(&self) -> i64 {
        admin()
            .await
            .query_one(&format!("SELECT count(*) FROM \"{}\"", self.name), &[])
            .await
            .unwrap()
            .get(0)
    }

    async fn drop_table(self) {
        admin()
            .await
            .batch_execute(&format!("DROP TABLE IF EXISTS \"{}\"", self.name))
            .await
            .unwrap();
    }
}

fn config(sink: &str, table: TableConfig) -> PostgresSinkConfig {
    let mut config = PostgresSinkConfig::new(sink, table);
    config.dbname = "test".into();
    config.linger = Duration::from_millis(10);
    config.retry = crate::RetryPolicy {
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
    };
    config
}

fn messages(partition: &str, sequence_numbers: Range<i64>, body: &str) -> Vec<Message> {
    sequence_numbers
        .map(|n| {
            let mut message = Message::telemetry(body.replace("{n}", &n.to_string()));
            message.partition = partition.into();
            message.sequence_number = n;
            message.offset = (n * 100).to_string();
            message
        })
        .collect()
}

fn batch(ticket: u64, messages: &[Message]) -> SinkBatch {
    SinkBatch {
        ticket,
        batch: MessageBatchBuilder::batch_of(messages).unwrap(),
    }
}

async fn run(config: PostgresSinkConfig, batches: Vec<SinkBatch>) -> Vec<Ack> {
    let (acks, mut received) = mpsc::channel(64);
    let mut sink = PostgresSink::new(config, acks).unwrap();
    let tickets = batches.len();
    for batch in batches {
        sink.write(batch).await.unwrap();
    }
    sink.flush(FlushReason::Shutdown).await.unwrap();
    let mut all = Vec::new();
    while let Ok(ack) = received.try_recv() {
        all.push(ack);
    }
    assert_eq!(all.len(), tickets, "one ack per ticket: {all:?}");
    all.sort_by_key(|a| a.ticket);
    all
}

#[tokio::test]
async fn default_table_is_created_and_replayed_duplicates_are_absorbed() {
    let table = TestTable::new("replay").await;
    let first = vec![
        batch(1, &messages("0", 0..50, r#"{"n":{n}}"#)),
        batch(2, &messages("1", 0..30, "raw\u{1}{n}")),
    ];
    let acks = run(config("pg", TableConfig::new(&table.name)), first.clone()).await;
    assert!(acks.iter().all(|a| a.failed.is_empty()), "{acks:?}");
    assert_eq!(table.count().await, 80);

    // A restart replays an overlapping range: only the new rows are added.
    let replay = vec![
        batch(3, &messages("0", 25..60, r#"{"n":{n}}"#)),
        first[1].clone(),
    ];
    let acks = run(config("pg", TableConfig::new(&table.name)), replay).await;
    assert!(acks.iter().all(|a| a.failed.is_empty()), "{acks:?}");
    assert_eq!(table.count().await, 90);

    let row = admin()
        .await
        .query_one(
            &format!(
                "SELECT \"offset\", body_json->>'n', body_bytes, application_properties::text \
                 FROM \"{}\" WHERE partition = '0' AND sequence_number = 7",
                table.name
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "700");
    assert_eq!(row.get::<_, String>(1), "7");
    assert_eq!(row.get::<_, Option<Vec<u8>>>(2), None);
    assert_eq!(row.get::<_, String>(3), "{}");
    let raw: Vec<u8> = admin()
        .await
        .query_one(
            &format!(
                "SELECT body_bytes FROM \"{}\" WHERE partition = '1' AND sequence_number = 3",
                table.name
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(raw, b"raw\x013");
    table.drop_table().await;
}

#[tokio::test]
async fn a_bad_row_is_isolated_with_its_sqlstate_and_the_rest_commits() {
    let table = TestTable::new("badrow").await;
    admin()
        .await
        .batch_execute(&format!(
            "CREATE TABLE \"{}\" (event_hub text NOT NULL, partition text NOT NULL, \
             sequence_number bigint NOT NULL, temperature double precision CHECK (temperature < 100), \
             device text NOT NULL, UNIQUE (event_hub, partition, sequence_number))",
            table.name
        ))
        .await
        .unwrap();
    let mapping = TableConfig {
        name: table.name.clone(),
        create: false,
        columns: vec![
            ColumnMapping {
                name: "temperature".into(),
                source: "$.t".into(),
                sql_type: SqlType::Double,
            },
            ColumnMapping {
                name: "device".into(),
                source: "$.d".into(),
                sql_type: SqlType::Text,
            },
        ],
    };
    let bodies = [
        r#"{"t":20,"d":"a"}"#,
        r#"{"t":"warm","d":"b"}"#,
        r#"{"t":150,"d":"c"}"#,
        r#"{"t":21}"#,
        r#"{"t":22,"d":"e"}"#,
        r#"{"t":23,"d":"f"}"#,
    ];
    let rows: Vec<Message> = bodies
        .iter()
        .enumerate()
        .map(|(n, body)| {
            let mut message = Message::telemetry(*body);
            message.sequence_number = i64::try_from(n).unwrap();
            message
        })
        .collect();
    let acks = run(config("pg", mapping), vec![batch(9, &rows)]).await;
    let failed: Vec<(usize, &str)> = acks[0]
        .failed
        .iter()
        .map(|f| (f.row, &f.error[..5]))
        .collect();
    assert_eq!(
        failed,
        [(1, "22P02"), (2, "23514"), (3, "23502")],
        "{acks:?}"
    );
    assert_eq!(table.count().await, 3);
    table.drop_table().await;
}

#[tokio::test]
async fn columns_of_another_type_are_filled_through_assignment_casts() {
    let table = TestTable::new("casts").await;
    admin()
        .await
        .batch_execute(&format!(
            "CREATE TABLE \"{}\" (event_hub varchar(20), partition text, sequence_number bigint, \
             temperature numeric(5, 1), UNIQUE (event_hub, partition, sequence_number))",
            table.name
        ))
        .await
        .unwrap();
    let mapping = TableConfig {
        name: table.name.clone(),
        create: false,
        columns: vec![ColumnMapping {
            name: "temperature".into(),
            source: "$.t".into(),
            sql_type: SqlType::Double,
        }],
    };
    let rows = messages("0", 0..3, r#"{"t":2{n}.25}"#);
    let acks = run(config("pg", mapping.clone()), vec![batch(1, &rows)]).await;
    assert!(acks[0].failed.is_empty(), "{acks:?}");
    let acks = run(config("pg", mapping), vec![batch(2, &rows)]).await;
    assert!(acks[0].failed.is_empty(), "{acks:?}");
    let stored: String = admin()
        .await
        .query_one(
            &format!(
                "SELECT string_agg(temperature::text, ',' ORDER BY sequence_number) FROM \"{}\"",
                table.name
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, "20.3,21.3,22.3");
    table.drop_table().await;
}

#[tokio::test]
async fn a_lost_connection_is_reopened_and_no_row_is_lost() {
    let table = TestTable::new("reconnect").await;
    let sink_name = format!("reconnect-{}", uuid::Uuid::new_v4().simple());
    let (acks, mut received) = mpsc::channel(64);
    let mut sink =
        PostgresSink::new(config(&sink_name, TableConfig::new(&table.name)), acks).unwrap();
    sink.write(batch(1, &messages("0", 0..10, "{}")))
        .await
        .unwrap();
    sink.flush(FlushReason::Deadline).await.unwrap();
    received.recv().await.unwrap();
    let killed: bool = admin()
        .await
        .query_one(
            "SELECT bool_or(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
            &[&format!("hubroute {sink_name}")],
        )
        .await
        .unwrap()
        .get(0);
    assert!(killed, "the sink's connection was not found");
    sink.write(batch(2, &messages("0", 10..20, "{}")))
        .await
        .unwrap();
    sink.flush(FlushReason::Shutdown).await.unwrap();
    let ack = received.recv().await.unwrap();
    assert_eq!(ack, Ack::committed(2));
    assert_eq!(table.count().await, 20);
    table.drop_table().await;
}

#[tokio::test]
async fn write_blocks_while_the_table_is_locked_and_nothing_is_acked() {
    let table = TestTable::new("blocked").await;
    let mut config = config("pg", TableConfig::new(&table.name));
    config.batch_max_rows = 1;
    let (acks, mut received) = mpsc::channel(64);
    let mut sink = PostgresSink::new(config, acks).unwrap();
    sink.write(batch(1, &messages("0", 0..1, "{}")))
        .await
        .unwrap();
    sink.flush(FlushReason::Shutdown).await.unwrap();
    received.recv().await.unwrap();

    let mut locker = admin().await;
    let lock = locker.transaction().await.unwrap();
    lock.batch_execute(&format!(
        "LOCK TABLE \"{}\" IN ACCESS EXCLUSIVE MODE",
        table.name
    ))
    .await
    .unwrap();
    // One batch in the writer (blocked on the lock), one in the channel, the third write waits.
    sink.write(batch(2, &messages("0", 1..2, "{}")))
        .await
        .unwrap();
    sink.write(batch(3, &messages("0", 2..3, "{}")))
        .await
        .unwrap();
    let third = tokio::time::timeout(
        Duration::from_millis(300),
        sink.write(batch(4, &messages("0", 3..4, "{}"))),
    )
    .await;
    assert!(
        third.is_err(),
        "write did not block while the table was locked"
    );
    assert!(
        received.try_recv().is_err(),
        "acked while the table was locked"
    );
    lock.commit().await.unwrap();

    sink.write(batch(4, &messages("0", 3..4, "{}")))
        .await
        .unwrap();
    sink.flush(FlushReason::Shutdown).await.unwrap();
    let mut tickets: Vec<u64> = std::iter::from_fn(|| received.try_recv().ok())
        .map(|a| a.ticket)
        .collect();
    tickets.sort_unstable();
    assert_eq!(tickets, [2, 3, 4]);
    assert_eq!(table.count().await, 4);
    table.drop_table().await;
}

#[tokio::test]
async fn a_table_without_the_unique_key_stops_the_sink_with_advice() {
    let table = TestTable::new("nokey").await;
    admin()
        .await
        .batch_execute(&format!(
            "CREATE TABLE \"{}\" (event_hub text, partition text, sequence_number bigint)",
            table.name
        ))
        .await
        .unwrap();
    let mapping = TableConfig {
        name: table.name.clone(),
        create: false,
        columns: vec![],
    };
    let mut mapping_config = config("pg", mapping);
    mapping_config.table.columns = vec![ColumnMapping {
        name: "partition_key".into(),
        source: "partition_key".into(),
        sql_type: SqlType::Text,
    }];
    admin()
        .await
        .batch_execute(&format!(
            "ALTER TABLE \"{}\" ADD COLUMN partition_key text",
            table.name
        ))
        .await
        .unwrap();
    let (acks, _received) = mpsc::channel(4);
    let mut sink = PostgresSink::new(mapping_config, acks).unwrap();
    sink.write(batch(1, &messages("0", 0..2, "{}")))
        .await
        .unwrap();
    let error = sink.flush(FlushReason::Shutdown).await.unwrap_err();
    assert!(!error.is_retryable());
    let text = error.to_string();
    assert!(
        text.contains("42P10")
            && text.contains("unique constraint on (event_hub, partition, sequence_number)"),
        "{text}"
    );
    table.drop_table().await;
}

#[test]
fn the_password_is_masked_in_debug_output() {
    let json = r#"{"name":"pg","password":"hunter2","table":{"name":"t"}}"#;
    let config: PostgresSinkConfig = serde_json::from_str(json).unwrap();
    assert_eq!(
        config.password.as_ref().map(|p| p.expose()),
        Some("hunter2")
    );
    assert!(!format!("{config:?}").contains("hunter2"));
}

/// The test CA `.ci/services.sh` (`ensure_postgres_tls`) generated: `<data_directory>/hubroute-tls`.
async fn test_ca() -> String {
    let data: String = admin()
        .await
        .query_one("SHOW data_directory", &[])
        .await
        .unwrap()
        .get(0);
    let ca = format!("{data}/hubroute-tls/ca.crt");
    assert!(
        std::path::Path::new(&ca).is_file(),
        "{ca} is missing: PostgreSQL is not set up for TLS; run .ci/test (or: source .ci/services.sh \
         && ensure_postgres_tls)"
    );
    ca
}

/// The role that `pg_hba.conf` admits only over TLS, with SCRAM.
fn tls_config(
    table: &TestTable,
    sslmode: SslMode,
    sslrootcert: Option<String>,
) -> PostgresSinkConfig {
    let mut config = config("pg-tls", TableConfig::new(&table.name));
    config.user = "hubroute_tls".into();
    config.password = Some(crate::Secret::new("hubroute_tls"));
    config.sslmode = sslmode;
    config.sslrootcert = sslrootcert;
    config
}

#[tokio::test]
async fn verified_tls_connections_write_rows() {
    let ca = test_ca().await;
    let cases = [
        ("127.0.0.1", SslMode::VerifyFull, Some(ca.clone())),
        ("localhost", SslMode::VerifyFull, Some(ca.clone())),
        ("127.0.0.1", SslMode::VerifyCa, Some(ca.clone())),
        ("127.0.0.1", SslMode::Require, None),
        ("127.0.0.1", SslMode::Prefer, None),
    ];
    for (host, sslmode, sslrootcert) in cases {
        let table = TestTable::new("tls").await;
        let mut config = tls_config(&table, sslmode, sslrootcert);
        config.host = host.into();
        let acks = run(config, vec![batch(1, &messages("0", 0..5, r#"{"n":{n}}"#))]).await;
        assert!(acks[0].failed.is_empty(), "{host} {sslmode:?}: {acks:?}");
        assert_eq!(table.count().await, 5, "{host} {sslmode:?}");
        table.drop_table().await;
    }
}

/// Runs the sink until it stops and returns its error.
async fn fatal_error(config: PostgresSinkConfig) -> Error {
    let (acks, _received) = mpsc::channel(4);
    let mut sink = PostgresSink::new(config, acks).unwrap();
    sink.write(batch(1, &messages("0", 0..2, "{}")))
        .await
        .unwrap();
    let error = tokio::time::timeout(Duration::from_secs(30), sink.flush(FlushReason::Shutdown))
        .await
        .expect("a TLS misconfiguration stops the sink instead of retrying")
        .unwrap_err();
    assert!(!error.is_retryable(), "{error}");
    error
}

#[tokio::test]
async fn a_server_requiring_tls_refuses_sslmode_disable_with_advice() {
    let table = TestTable::new("notls").await;
    let error = fatal_error(tls_config(&table, SslMode::Disable, None))
        .await
        .to_string();
    assert!(
        error.contains("28000")
            && error.contains("no encryption")
            && error.contains("set sslmode = \"require\""),
        "{error}"
    );
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_naming_the_ca_file() {
    test_ca().await;
    let dir = tempfile::tempdir().unwrap();
    let other_ca = dir.path().join("other-ca.pem");
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    std::fs::write(&other_ca, params.self_signed(&key).unwrap().pem()).unwrap();
    let other_ca = other_ca.display().to_string();
    for sslmode in [SslMode::VerifyCa, SslMode::VerifyFull, SslMode::Require] {
        let table = TestTable::new("wrongca").await;
        let error = fatal_error(tls_config(&table, sslmode, Some(other_ca.clone())))
            .await
            .to_string();
        assert!(
            error.contains("not signed by a CA in the CA certificates in sslrootcert")
                && error.contains(&other_ca)
                && error.contains("wrong CA"),
            "{sslmode:?}: {error}"
        );
    }
}

#[tokio::test]
async fn scram_over_tls_binds_the_channel_to_the_servers_certificate() {
    let ca = test_ca().await;
    let tls = RustlsConnector::new(SslMode::VerifyFull, Some(&ca)).unwrap();
    let mut pg = tokio_postgres::Config::new();
    pg.host("127.0.0.1")
        .port(5432)
        .user("hubroute_tls")
        .password("hubroute_tls")
        .dbname("test")
        .ssl_mode(tokio_postgres::config::SslMode::Require)
        .channel_binding(tokio_postgres::config::ChannelBinding::Require);
    let (client, connection) = pg
        .connect(tls)
        .await
        .expect("SCRAM-SHA-256-PLUS with our tls-server-end-point binding");
    tokio::spawn(connection);
    let ssl: bool = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl);
}

#[tokio::test]
async fn the_probe_finds_the_table_and_reports_a_missing_one_or_a_closed_port() {
    let table = TestTable::new("probe").await;
    let existing = |create: bool| {
        let mut table_config = TableConfig::new(&table.name);
        table_config.create = create;
        config("warehouse", table_config)
    };
    // Missing, but the sink would create it.
    probe(&existing(true)).await.unwrap();
    let error = probe(&existing(false)).await.unwrap_err().to_string();
    assert!(
        error.contains("database probe failed (42P01)")
            && error.contains(&format!(
                "table \"{}\" does not exist; create it or set `create = true`",
                table.name
            )),
        "{error}"
    );
    admin()
        .await
        .batch_execute(&format!("CREATE TABLE \"{}\" (x int)", table.name))
        .await
        .unwrap();
    probe(&existing(false)).await.unwrap();

    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut down = existing(false);
    down.port = closed;
    let error = probe(&down).await.unwrap_err();
    assert!(
        error
            .to_string()
            .contains("database connect failed (08001)")
            && error.to_string().contains(&format!(
                "check that PostgreSQL is running at 127.0.0.1:{closed}"
            )),
        "{error}"
    );
    assert!(error.is_retryable());
    let mut wrong_database = existing(false);
    wrong_database.dbname = "hubroute_no_such_database".into();
    let error = probe(&wrong_database).await.unwrap_err().to_string();
    assert!(error.contains("(3D000)"), "{error}");
    table.drop_table().await;
}
