//! Test support shared by the unit tests of the IoT hub and the device ingress: an [`IotHub`] whose
//! events go to a recording publisher, served over a real socket.

use std::sync::{Arc, Mutex};

use hubroute_protocol::{IotHubConnectionString, iothub};

use super::{IotHub, IotHubConfig, OWNER_POLICY};
use crate::{EventPublisher, EventToPublish, PublishTarget, PublishedPosition, Result};

/// Records every published event.
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    pub(crate) events: Mutex<Vec<(String, PublishTarget, EventToPublish)>>,
}

impl EventPublisher for Recorder {
    fn publish(
        &self,
        hub: &str,
        target: PublishTarget,
        event: EventToPublish,
    ) -> Result<PublishedPosition> {
        let mut events = self.events.lock().unwrap();
        events.push((hub.to_owned(), target, event));
        Ok(PublishedPosition {
            partition: "0".to_owned(),
            sequence_number: i64::try_from(events.len()).unwrap() - 1,
            offset: "0".to_owned(),
            enqueued_time_ms: 0,
        })
    }
}

/// An IoT hub served on `127.0.0.1:0` until dropped.
pub(crate) struct TestHub {
    pub(crate) hub: Arc<IotHub>,
    pub(crate) recorder: Arc<Recorder>,
    pub(crate) base_url: String,
    pub(crate) client: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TestHub {
    pub(crate) async fn start(config: IotHubConfig) -> Self {
        let recorder = Arc::new(Recorder::default());
        let publisher: Arc<dyn EventPublisher> = Arc::<Recorder>::clone(&recorder);
        let hub = IotHub::new(config, publisher);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(super::serve_http(listener, Arc::clone(&hub), None, async {
            stopped.await.ok();
        }));
        // serve_http registers the host name before it serves; wait until it has.
        while hub.service_connection_string().is_none() {
            tokio::task::yield_now().await;
        }
        Self {
            hub,
            recorder,
            base_url,
            client: reqwest::Client::new(),
            stop: Some(stop),
        }
    }

    pub(crate) fn owner(&self) -> IotHubConnectionString {
        IotHubConnectionString::parse(&self.hub.connection_string(OWNER_POLICY).unwrap()).unwrap()
    }

    /// A token of `policy`.
    pub(crate) fn policy_token(&self, policy: &str) -> String {
        IotHubConnectionString::parse(&self.hub.connection_string(policy).unwrap())
            .unwrap()
            .token(chrono::Utc::now().timestamp() + 600)
            .unwrap()
    }

    /// Creates a device (or module) through the service API and returns its connection string.
    pub(crate) async fn register(
        &self,
        device: &str,
        module: Option<&str>,
    ) -> IotHubConnectionString {
        let path = match module {
            Some(module) => format!("/devices/{device}/modules/{module}"),
            None => format!("/devices/{device}"),
        };
        let response = self
            .client
            .put(format!(
                "{}{path}?api-version={}",
                self.base_url,
                iothub::API_VERSION
            ))
            .header(
                "authorization",
                self.owner()
                    .token(chrono::Utc::now().timestamp() + 600)
                    .unwrap(),
            )
            .json(&serde_json::json!({"deviceId": device, "moduleId": module}))
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{}",
            response.text().await.unwrap()
        );
        IotHubConnectionString::parse(&self.hub.device_connection_string(device, module).unwrap())
            .unwrap()
    }

    /// The events published so far, forgetting them.
    pub(crate) fn take_events(&self) -> Vec<(String, PublishTarget, EventToPublish)> {
        std::mem::take(&mut *self.recorder.events.lock().unwrap())
    }
}

impl Drop for TestHub {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
