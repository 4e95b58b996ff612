//! The PostgreSQL sink against the real server at 127.0.0.1:5432, reached through a TCP proxy
//! that injects faults: a failed operation is a connection the proxy closes at once, a stall is
//! a connection it holds without forwarding until released.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hubroute_sinks::{AckSender, PostgresSink, PostgresSinkConfig, Sink, TableConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio_postgres::{Client, NoTls};

use super::quick_retry;
use crate::contract::{Harness, RowKey, conformance};
use crate::faults::Backend;

const POSTGRES: &str = "127.0.0.1:5432";

async fn admin() -> Client {
    let (client, connection) =
        tokio_postgres::connect("host=127.0.0.1 port=5432 user=postgres dbname=test", NoTls)
            .await
            .unwrap_or_else(|error| {
                panic!(
                    "PostgreSQL is not reachable at {POSTGRES} ({error}); start PostgreSQL: \
             pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
                )
            });
    tokio::spawn(connection);
    client
}

/// Forwards connections to PostgreSQL, asking the backend first.
async fn proxy(backend: Arc<Backend>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let backend = Arc::clone(&backend);
            tokio::spawn(async move {
                if backend.before_operation().await {
                    return;
                }
                let mut server = TcpStream::connect(POSTGRES).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    port
}

struct PostgresHarness {
    table: String,
    port: u16,
    backend: Arc<Backend>,
}

impl PostgresHarness {
    async fn new() -> Self {
        let backend = Backend::new();
        Self {
            table: format!("hr_conformance_{}", uuid::Uuid::new_v4().simple()),
            port: proxy(Arc::clone(&backend)).await,
            backend,
        }
    }
}

impl Drop for PostgresHarness {
    fn drop(&mut self) {
        let table = self.table.clone();
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async {
                    let sql = format!("DROP TABLE IF EXISTS \"{table}\"");
                    admin().await.batch_execute(&sql).await.unwrap();
                });
        })
        .join()
        .unwrap();
    }
}

#[async_trait]
impl Harness for PostgresHarness {
    async fn build(&mut self, acks: AckSender) -> Box<dyn Sink> {
        let mut config = PostgresSinkConfig::new("warehouse", TableConfig::new(&self.table));
        config.port = self.port;
        config.dbname = "test".into();
        config.batch_max_rows = 40;
        config.linger = Duration::from_secs(600);
        config.retry = quick_retry();
        Box::new(PostgresSink::new(config, acks).unwrap())
    }

    async fn stored(&mut self) -> Vec<RowKey> {
        let sql = format!(
            "SELECT event_hub, partition, sequence_number FROM \"{}\"",
            self.table
        );
        match admin().await.query(&sql, &[]).await {
            Ok(rows) => rows
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect(),
            // Nothing was delivered yet, so the table was not created yet.
            Err(error) if error.code().is_some_and(|c| c.code() == "42P01") => Vec::new(),
            Err(error) => panic!("{error}"),
        }
    }

    fn backend(&self) -> Arc<Backend> {
        Arc::clone(&self.backend)
    }
}

#[tokio::test]
async fn the_postgres_sink_conforms() {
    conformance(PostgresHarness::new).await;
}
