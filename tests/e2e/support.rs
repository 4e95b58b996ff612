//! Shared helpers of the end-to-end tests: locating peers (the `hubroute` binary, Python with the
//! official Azure SDK), running the emulator as a child process, reading events back with a plain
//! fe2o3-amqp receiver, a webhook receiver for the engine's webhook endpoints, and reading what the
//! engine wrote and reports (Parquet files, `/metrics`).
//!
//! A missing peer is a failure with instructions, never a skip.

use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use arrow::array::{Array, AsArray};

use fe2o3_amqp::{
    Connection, Receiver, Sender, Session,
    connection::ConnectionHandle,
    sasl_profile::SaslProfile,
    session::SessionHandle,
    types::{
        messaging::{Body, Message, Source},
        primitives::{Symbol, Timestamp, Value},
    },
};
use fe2o3_amqp_cbs::{client::CbsClient, token::CbsToken};
use hubroute_protocol::{ConnectionString, EventPosition, IotHubConnectionString, cbs, link};
use serde_amqp::{described::Described, descriptor::Descriptor};

/// The workspace root.
pub(crate) fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `hubroute` binary under test.
pub(crate) fn hubroute() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hubroute"))
}

/// Python with the official Azure SDK: `$HUBROUTE_PYTHON`, else `<workspace>/.venv/bin/python`.
/// Panics with instructions when it or `azure-eventhub` is missing.
pub(crate) fn python() -> PathBuf {
    let python = std::env::var_os("HUBROUTE_PYTHON")
        .map_or_else(|| workspace_root().join(".venv/bin/python"), PathBuf::from);
    let probe = Command::new(&python)
        .args(["-c", "import azure.eventhub"])
        .output();
    match probe {
        Ok(output) if output.status.success() => python,
        Ok(output) => panic!(
            "{} cannot import azure.eventhub ({}): run .ci/test (it creates .venv)",
            python.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        ),
        Err(error) => panic!(
            "no Python at {} ({error}): run .ci/test (it creates .venv), or set HUBROUTE_PYTHON",
            python.display()
        ),
    }
}

/// Longest a Python fidelity script may run before the test fails (the SDK retries silently).
const PYTHON_TIMEOUT: Duration = Duration::from_secs(180);

/// Runs `tests/e2e/python/<script>` with `args` and returns its stdout; panics with its stderr if it
/// fails or runs longer than three minutes.
pub(crate) fn run_python(script: &str, args: &[&str]) -> String {
    let path = workspace_root().join("tests/e2e/python").join(script);
    let stdout = tempfile::tempfile().expect("temp file for stdout");
    let stderr = tempfile::tempfile().expect("temp file for stderr");
    let mut child = Command::new(python())
        .arg(&path)
        .args(args)
        .stdout(stdout.try_clone().expect("clone stdout file"))
        .stderr(stderr.try_clone().expect("clone stderr file"))
        .spawn()
        .unwrap_or_else(|error| panic!("running {}: {error}", path.display()));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for Python") {
            break Some(status);
        }
        if started.elapsed() > PYTHON_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let read = |mut file: std::fs::File| {
        use std::io::{Read as _, Seek as _};
        let mut text = String::new();
        file.rewind().expect("rewind");
        file.read_to_string(&mut text).expect("read Python output");
        text
    };
    let (stdout, stderr) = (read(stdout), read(stderr));
    let tail: String = stderr
        .lines()
        .rev()
        .take(40)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    match status {
        Some(status) if status.success() => stdout,
        Some(status) => {
            panic!("{script} failed ({status}):\nstdout: {stdout}\nstderr (tail): {tail}")
        }
        None => panic!(
            "{script} did not finish within {PYTHON_TIMEOUT:?}:\nstdout: {stdout}\nstderr (tail): {tail}"
        ),
    }
}

/// The lines a child writes to `output` (its piped stdout or stderr). A thread keeps draining the
/// pipe to its end, even once the receiver is dropped, so the child never blocks on (or dies of) a
/// full pipe.
pub(crate) fn lines_of(output: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (lines_tx, lines) = mpsc::sync_channel(16);
    std::thread::spawn(move || {
        for line in BufReader::new(output).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    lines
}

/// A child process killed (and reaped) when the guard drops, so a failing test leaves no service
/// running; derefs to the [`Child`].
pub(crate) struct KillOnDrop(pub(crate) Child);

impl std::ops::Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `hubroute emulator` with its AMQP listener and HTTP ingress on free loopback ports.
pub(crate) fn emulator_command() -> Command {
    let mut command = hubroute();
    command.args(["emulator", "--listen", "127.0.0.1:0"]);
    command.args(["--http", "127.0.0.1:0"]);
    command
}

/// A `hubroute emulator` child process, killed on drop.
#[derive(Debug)]
pub(crate) struct EmulatorProcess {
    child: Child,
    /// The connection strings it printed, one per event hub, in order.
    pub(crate) connection_strings: Vec<String>,
    /// Base URL of its HTTP device ingress, e.g. `http://127.0.0.1:41234`.
    pub(crate) ingress_url: String,
    /// The IoT Hub service connection string it printed (`HostName=…`).
    pub(crate) service_connection_string: String,
}

impl EmulatorProcess {
    /// Starts `hubroute emulator --listen 127.0.0.1:0 --http 127.0.0.1:0 <args>` and waits until it
    /// has printed `hubs` connection strings and its ingress address.
    pub(crate) fn start(args: &[&str], hubs: usize) -> Self {
        let mut child = emulator_command()
            .args(args)
            // fe2o3-amqp logs every peer disconnect as an error; keep the test output readable.
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn,fe2o3_amqp=off".to_owned()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning `hubroute emulator`");
        let lines = lines_of(child.stdout.take().expect("piped stdout"));
        let mut process = Self {
            child,
            connection_strings: Vec::new(),
            ingress_url: String::new(),
            service_connection_string: String::new(),
        };
        while process.connection_strings.len() < hubs || process.ingress_url.is_empty() {
            let line = lines
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| {
                    panic!(
                        "`hubroute emulator {}` printed {:?} and no ingress address within 60 s",
                        args.join(" "),
                        process.connection_strings
                    )
                });
            if line.starts_with("Endpoint=") {
                process.connection_strings.push(line);
            } else if line.starts_with("HostName=") {
                process.service_connection_string = line;
            } else if let Some(rest) = line.strip_prefix("Device ingress: ") {
                let url = rest.split("/devices").next().unwrap_or(rest);
                url.clone_into(&mut process.ingress_url);
            }
        }
        process
    }
}

impl Drop for EmulatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Creates a device (or module) through IoT Hub's service API with `service` (a policy with
/// RegistryWrite) and returns its device connection string.
pub(crate) async fn register_device(
    service: &IotHubConnectionString,
    device: &str,
    module: Option<&str>,
) -> IotHubConnectionString {
    let path = match module {
        Some(module) => format!("/devices/{device}/modules/{module}"),
        None => format!("/devices/{device}"),
    };
    let response = reqwest::Client::new()
        .put(format!(
            "{}{path}?api-version=2021-04-12",
            service.base_url()
        ))
        .header(
            "authorization",
            service.token(chrono::Utc::now().timestamp() + 600).unwrap(),
        )
        .json(&serde_json::json!({ "deviceId": device, "moduleId": module }))
        .send()
        .await
        .expect("reaching the IoT hub's service API");
    let status = response.status();
    let body: serde_json::Value = response.json().await.expect("a JSON identity");
    assert!(status.is_success(), "registering {device}: {status} {body}");
    let key = body["authentication"]["symmetricKey"]["primaryKey"]
        .as_str()
        .expect("a generated key");
    let module = module.map(|m| format!(";ModuleId={m}")).unwrap_or_default();
    let emulator = if service.use_development_emulator {
        ";UseDevelopmentEmulator=true"
    } else {
        ""
    };
    IotHubConnectionString::parse(&format!(
        "HostName={};DeviceId={device}{module};SharedAccessKey={key}{emulator}",
        service.host_name
    ))
    .expect("a device connection string")
}

/// A SAS token of `connection` valid for ten minutes.
pub(crate) fn token(connection: &IotHubConnectionString) -> String {
    connection
        .token(chrono::Utc::now().timestamp() + 600)
        .expect("signing a token")
}

/// A connection authorised for one event hub through CBS, as the SDKs do in emulator mode.
#[derive(Debug)]
pub(crate) struct EventHubConnection {
    connection: ConnectionHandle<()>,
    session: SessionHandle<()>,
    hub: String,
}

impl EventHubConnection {
    /// Connects with SASL ANONYMOUS and puts a SAS token signed with the connection string's key.
    pub(crate) async fn open(connection_string: &str) -> Self {
        let cs = ConnectionString::parse(connection_string).expect("a valid connection string");
        let hub = cs
            .entity_path
            .clone()
            .expect("EntityPath in the connection string");
        let mut connection = Connection::builder()
            .container_id(format!("e2e-{}", uuid::Uuid::new_v4()))
            .sasl_profile(SaslProfile::Anonymous)
            .open(format!("amqp://{}:{}", cs.host, cs.effective_port()).as_str())
            .await
            .expect("connecting to the emulator");
        let mut session = Session::begin(&mut connection).await.expect("session");
        let mut cbs_client = CbsClient::attach(&mut session).await.expect("$cbs link");
        let audience = cs.audience(&hub);
        let expiry = chrono::Utc::now().timestamp() + 3600;
        let token = cs.key.as_ref().expect("a key").sign(&audience, expiry);
        cbs_client
            .put_token(
                audience.as_str(),
                CbsToken::new(
                    token.as_str(),
                    cbs::SAS_TOKEN_TYPE,
                    Timestamp::from_milliseconds(expiry * 1000),
                ),
            )
            .await
            .expect("CBS put-token");
        cbs_client.close().await.expect("closing $cbs");
        Self {
            connection,
            session,
            hub,
        }
    }

    /// Attaches a receiver to `<hub>/ConsumerGroups/<group>/Partitions/<partition>` from the start.
    pub(crate) async fn receiver(
        &mut self,
        consumer_group: &str,
        partition: &str,
    ) -> Result<Receiver, fe2o3_amqp::link::ReceiverAttachError> {
        let address = format!(
            "{}/ConsumerGroups/{consumer_group}/Partitions/{partition}",
            self.hub
        );
        let filter = Described {
            descriptor: Descriptor::Code(link::SELECTOR_FILTER_CODE),
            value: Value::String(EventPosition::earliest().to_filter_expression()),
        };
        Receiver::builder()
            .name(format!("e2e-receiver-{}", uuid::Uuid::new_v4()))
            .source(
                Source::builder()
                    .address(address)
                    .add_to_filter(Symbol::from(link::SELECTOR_FILTER_KEY), filter)
                    .build(),
            )
            .attach(&mut self.session)
            .await
    }

    /// Attaches a sender to `<hub>/Partitions/<partition>`: a producer that picks the partition.
    pub(crate) async fn partition_sender(&mut self, partition: &str) -> Sender {
        Sender::attach(
            &mut self.session,
            format!("e2e-sender-{}", uuid::Uuid::new_v4()),
            format!("{}/Partitions/{partition}", self.hub),
        )
        .await
        .unwrap_or_else(|error| panic!("attaching a sender to partition {partition}: {error}"))
    }

    /// Reads a partition from the start until `expected` events arrived (then one more second, to
    /// catch surplus events); panics after 30 s without progress.
    pub(crate) async fn read_partition(
        &mut self,
        consumer_group: &str,
        partition: &str,
        expected: usize,
    ) -> Vec<Message<Body<Value>>> {
        let mut receiver = self
            .receiver(consumer_group, partition)
            .await
            .unwrap_or_else(|error| panic!("attaching to partition {partition}: {error}"));
        let mut events = Vec::new();
        loop {
            let wait = if events.len() >= expected {
                Duration::from_secs(1)
            } else {
                Duration::from_secs(30)
            };
            match tokio::time::timeout(wait, receiver.recv::<Body<Value>>()).await {
                Ok(delivery) => {
                    let delivery = delivery.expect("receiving");
                    receiver.accept(&delivery).await.expect("accepting");
                    events.push(delivery.into_message());
                }
                Err(_) if events.len() >= expected => break,
                Err(_) => panic!(
                    "partition {partition}: {} of {expected} events after 30 s of silence",
                    events.len()
                ),
            }
        }
        let _ = receiver.close().await;
        events
    }

    /// Closes session and connection.
    pub(crate) async fn close(mut self) {
        let _ = self.session.end().await;
        let _ = self.connection.close().await;
    }
}

/// A message annotation by key.
pub(crate) fn annotation<'m>(message: &'m Message<Body<Value>>, key: &str) -> Option<&'m Value> {
    message
        .message_annotations
        .as_ref()?
        .0
        .iter()
        .find_map(|(k, v)| {
            (k == &fe2o3_amqp::types::messaging::annotations::OwnedKey::from(key)).then_some(v)
        })
}

/// An application property by name, as a string.
pub(crate) fn app_property(message: &Message<Body<Value>>, name: &str) -> Option<String> {
    let value = message.application_properties.as_ref()?.0.get(name)?;
    match value {
        fe2o3_amqp::types::primitives::SimpleValue::String(s) => Some(s.clone()),
        other => Some(format!("{other:?}")),
    }
}

/// An HTTP webhook receiver: records every message it accepts and can be told to
/// hang (a stalled sink) until released, to answer slowly, or to fail.
#[derive(Clone)]
pub(crate) struct Hook {
    addr: SocketAddr,
    pub(crate) received: Arc<Mutex<Vec<serde_json::Value>>>,
    pub(crate) stalled: Arc<AtomicBool>,
    /// Answer every request after 300 ms (slow, but within any sensible timeout).
    pub(crate) slow: Arc<AtomicBool>,
    /// Answer 500 (a server error; retried) to every request.
    pub(crate) failing: Arc<AtomicBool>,
    /// Answer 400 (a permanent failure) to every request.
    pub(crate) rejecting: Arc<AtomicBool>,
    /// Answer 503 (the service is down; retried) to every request.
    pub(crate) unavailable: Arc<AtomicBool>,
    /// Answer `HEAD` (the engine's probe) with 200 even while `unavailable`: a service whose
    /// front answers while its POST handler fails.
    pub(crate) head_answers: Arc<AtomicBool>,
}

impl Hook {
    /// Serves `POST /hook` (and `HEAD /hook`, the engine's probe) on a free loopback port.
    pub(crate) async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let hook = Self {
            addr: listener.local_addr().unwrap(),
            received: Arc::default(),
            stalled: Arc::default(),
            slow: Arc::default(),
            failing: Arc::default(),
            rejecting: Arc::default(),
            unavailable: Arc::default(),
            head_answers: Arc::default(),
        };
        let state = hook.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |body: axum::body::Bytes| {
                let state = state.clone();
                async move {
                    while state.stalled.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    if state.slow.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                    if state.failing.load(Ordering::SeqCst) {
                        return axum::http::StatusCode::INTERNAL_SERVER_ERROR;
                    }
                    if state.rejecting.load(Ordering::SeqCst) {
                        return axum::http::StatusCode::BAD_REQUEST;
                    }
                    if state.unavailable.load(Ordering::SeqCst) {
                        return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                    }
                    // A body nested deeper than serde_json's limit is refused as a receiver would.
                    let Ok(events) = serde_json::from_slice::<Vec<serde_json::Value>>(&body) else {
                        return axum::http::StatusCode::BAD_REQUEST;
                    };
                    state.received.lock().unwrap().extend(events);
                    axum::http::StatusCode::OK
                }
            })
            .head({
                // The engine's health probe: a service that is down (or stalled) is so for every
                // method, as behind a gateway.
                let state = hook.clone();
                move || {
                    let state = state.clone();
                    async move {
                        while state.stalled.load(Ordering::SeqCst) {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        if state.unavailable.load(Ordering::SeqCst)
                            && !state.head_answers.load(Ordering::SeqCst)
                        {
                            axum::http::StatusCode::SERVICE_UNAVAILABLE
                        } else {
                            axum::http::StatusCode::OK
                        }
                    }
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        hook
    }

    /// The URL to configure as the webhook endpoint.
    pub(crate) fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// `systemProperties.messageId` of every message received, in arrival order.
    pub(crate) fn message_ids(&self) -> Vec<String> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .map(|e| {
                e["systemProperties"]["messageId"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    }
}

/// Warnings and errors logged in this process, where tests run the engine in-process.
static WARNINGS: std::sync::OnceLock<Arc<Mutex<Vec<u8>>>> = std::sync::OnceLock::new();

/// Appends what the log formatter writes to [`WARNINGS`], and to stderr for a failing test's output.
struct WarningsWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for WarningsWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        std::io::Write::write_all(&mut std::io::stderr(), bytes)?;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::Write::flush(&mut std::io::stderr())
    }
}

/// Records the warnings and errors logged from now on in this test process (nextest runs each
/// test in a process of its own; under `cargo test`, a test recognises its own lines by something
/// only it has, such as its temporary directory). Call it before starting what logs.
pub(crate) fn capture_warnings() {
    WARNINGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = Arc::clone(&buffer);
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(move || WarningsWriter(Arc::clone(&writer)))
            .try_init()
            .expect("the first global log subscriber of this test process");
        buffer
    });
}

/// The lines [`capture_warnings`] recorded that contain every one of `needles`.
pub(crate) fn warnings_containing(needles: &[&str]) -> Vec<String> {
    let buffer = WARNINGS
        .get()
        .expect("capture_warnings() was called")
        .lock()
        .unwrap();
    String::from_utf8_lossy(&buffer)
        .lines()
        .filter(|line| needles.iter().all(|needle| line.contains(needle)))
        .map(str::to_owned)
        .collect()
}

/// Polls `done` every 50 ms; panics naming `what` once `timeout` has passed.
pub(crate) async fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < timeout,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `message_id` of every row of every Parquet file under `dir`.
pub(crate) fn parquet_message_ids(dir: &Path) -> Vec<String> {
    let mut ids = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "parquet") {
                ids.extend(parquet_file_message_ids(
                    std::fs::File::open(&path).unwrap(),
                ));
            }
        }
    }
    ids
}

/// `message_id` of every row of one Parquet file (a local file or the bytes of an object).
pub(crate) fn parquet_file_message_ids(
    file: impl parquet::file::reader::ChunkReader + 'static,
) -> Vec<String> {
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let mut ids = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        let column = batch
            .column_by_name("message_id")
            .unwrap()
            .as_string::<i32>();
        ids.extend((0..column.len()).map(|i| column.value(i).to_owned()));
    }
    ids
}

/// The Prometheus metrics text a running engine serves at `addr`.
/// The sum of the values of every series of the Prometheus text whose line starts with `prefix`.
pub(crate) fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(prefix))
        .map(|line| line.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

pub(crate) async fn metrics_of(addr: impl std::fmt::Display) -> String {
    reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// How long Azurite may take to listen.
const AZURITE_PATIENCE: Duration = Duration::from_secs(90);

/// A private Azurite blob service per test, so that deadlines do not depend on what else uses the
/// shared one, and so that a test may stop it (`stop`, then `resume` on the same port with the same
/// data directory) or hurt it: Azurite can stop completing uploads for good once clients died
/// mid-upload (Azure/Azurite#2436), which the chaos suite does on purpose.
///
/// Its data directory also holds its access log (`access.log`, one line per request with its
/// status, appended across restarts, with a line per start and stop), the evidence of which
/// uploads Azurite acknowledged.
pub(crate) struct PrivateAzurite {
    port: u16,
    data: tempfile::TempDir,
    child: Option<Child>,
}

impl PrivateAzurite {
    /// Starts it on a free port with an empty data directory.
    pub(crate) fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut azurite = Self {
            port,
            data: tempfile::Builder::new()
                .prefix("hubroute-azurite-")
                .tempdir()
                .unwrap(),
            child: None,
        };
        azurite.resume();
        azurite
    }

    /// Its blob endpoint, `http://127.0.0.1:<port>/devstoreaccount1`.
    pub(crate) fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/devstoreaccount1", self.port)
    }

    /// Keeps its data directory (blobs, metadata, access log) after the test, for a post-mortem;
    /// returns where it is.
    pub(crate) fn keep_data(&mut self) -> &Path {
        self.data.disable_cleanup(true);
        self.data.path()
    }

    /// The access log: what Azurite printed, one line per request, across restarts.
    pub(crate) fn access_log(&self) -> PathBuf {
        self.data.path().join("access.log")
    }

    /// Appends a line of the suite's own to the access log (starts and stops).
    fn note(&self, what: &str) {
        use std::io::Write as _;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.access_log())
            .expect("opening Azurite's access log");
        let _ = writeln!(log, "--- {} {what}", chrono::Utc::now().to_rfc3339());
    }

    /// Starts the service again after `stop` (or for the first time); waits until it listens.
    pub(crate) fn resume(&mut self) {
        let bin = workspace_root().join(".ci/node_modules/.bin/azurite-blob");
        assert!(
            bin.exists(),
            "{} is missing: run .ci/test (it installs Azurite)",
            bin.display()
        );
        self.note("starting");
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self.access_log())
            .expect("opening Azurite's access log");
        let child = Command::new(bin)
            .args([
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                &self.port.to_string(),
            ])
            .arg("--location")
            .arg(self.data.path())
            .args(["--skipApiVersionCheck", "--loose", "--disableTelemetry"])
            .stdout(log.try_clone().expect("a second handle of the access log"))
            .stderr(log)
            .spawn()
            .expect("Azurite starts");
        self.child = Some(child);
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                started.elapsed() < AZURITE_PATIENCE,
                "Azurite does not listen"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the service (SIGTERM, so it saves its data) and waits until the port is closed.
    pub(crate) fn stop(&mut self) {
        let mut child = self.child.take().expect("running");
        self.note("stopping (SIGTERM)");
        let stopping = Instant::now();
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let status = child.wait().unwrap();
        self.note(&format!("stopped after {:?}: {status}", stopping.elapsed()));
        assert!(std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err());
    }
}

impl Drop for PrivateAzurite {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The account key of Azurite's well-known development account (`devstoreaccount1`).
pub(crate) const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// The blob endpoint of the Azurite `.ci/test` starts (`HUBROUTE_AZURITE_BLOB_ENDPOINT`, by default
/// Azurite's well-known address).
pub(crate) fn shared_azurite_endpoint() -> String {
    std::env::var("HUBROUTE_AZURITE_BLOB_ENDPOINT")
        .unwrap_or_else(|_| "http://127.0.0.1:10000/devstoreaccount1".to_owned())
}

/// A client of `container` in the Azurite whose blob endpoint is `endpoint`
/// (`http://127.0.0.1:<port>/devstoreaccount1`).
pub(crate) fn azurite_container(
    endpoint: &str,
    container: &str,
) -> object_store::azure::MicrosoftAzure {
    object_store::azure::MicrosoftAzureBuilder::new()
        .with_account("devstoreaccount1")
        .with_access_key(AZURITE_KEY)
        .with_container_name(container)
        .with_endpoint(endpoint.to_owned())
        .with_allow_http(true)
        .build()
        .expect("Azurite client")
}

/// The address an Azurite blob endpoint (`http://127.0.0.1:<port>/<account>`) listens on.
pub(crate) fn azurite_address(endpoint: &str) -> SocketAddr {
    endpoint
        .strip_prefix("http://")
        .and_then(|rest| rest.split('/').next())
        .and_then(|authority| authority.parse().ok())
        .expect("Azurite's endpoint is http://127.0.0.1:<port>/<account>")
}

/// Creates `container` in the Azurite whose blob endpoint is `endpoint`, with the Azure SDK's own
/// storage client.
pub(crate) fn create_azurite_container(endpoint: &str, container: &str) {
    run_python(
        "checkpoint_store.py",
        &[
            "create",
            &format!(
                "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};BlobEndpoint={endpoint}"
            ),
            container,
        ],
    );
}

/// `message_id` of every row of every Parquet object in `store`.
pub(crate) async fn parquet_object_message_ids(
    store: &dyn object_store::ObjectStore,
) -> Vec<String> {
    use futures::TryStreamExt as _;
    let objects: Vec<_> = store.list(None).try_collect().await.unwrap();
    let mut ids = Vec::new();
    for object in objects {
        if object.location.extension() == Some("parquet") {
            ids.extend(parquet_file_message_ids(
                object_bytes(store, &object.location).await,
            ));
        }
    }
    ids
}

/// The whole content of the object at `location`.
pub(crate) async fn object_bytes(
    store: &dyn object_store::ObjectStore,
    location: &object_store::path::Path,
) -> bytes::Bytes {
    use object_store::ObjectStoreExt as _;
    store.get(location).await.unwrap().bytes().await.unwrap()
}
