//! An IoT hub's service connection string resolved to its Event Hubs-compatible endpoint, as
//! Microsoft's samples do it (reference "iothub-service-and-endpoints" §4): connect to the hub's
//! own AMQP endpoint, sign in with SASL PLAIN as `<policy>@sas.root.<hub>` and an IoT Hub token
//! (HMAC keyed with the base64-decoded key, audience `<host>/messages/events`), attach a receiver
//! to `amqps://<host>/messages/events/$management`, and read the `amqp:link:redirect` the hub
//! answers with. The result is the connection string the portal shows as the built-in endpoint's
//! "Event Hub-compatible endpoint": the redirect's host and event hub with the same policy's name
//! and key, which Event Hubs then takes as an Event Hubs key.
//!
//! The source resolves once when it starts and every receiver, reconnect and `$management` request
//! uses the result; the hub is asked again at the next start (its built-in endpoint may move on a
//! failover). The resolved endpoint is logged; keys and tokens never are.

use std::time::Duration;

use fe2o3_amqp_types::definitions::{ReceiverSettleMode, Role, SenderSettleMode};
use fe2o3_amqp_types::messaging::{Source, Target, TargetArchetype};
use fe2o3_amqp_types::performatives::Attach;
use hubroute_amqp::{ClientConfig, ClientConnection, Event, Redirect, SaslCredentials};
use hubroute_protocol::iothub_amqp::{self, IOT_HUB_WEBSOCKET_PATH};
use hubroute_protocol::{ConnectionString, IotHubConnectionString, SasKey, conditions, iothub};

use super::SourceConfig;
use super::transport::{Endpoint, connect};
use crate::{Error, Result};

/// How long connecting, signing in and being redirected may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(30);
/// The lifetime of the sign-in token (the samples use five minutes).
const TOKEN_LIFETIME: Duration = Duration::from_secs(300);
/// The idle timeout announced to the hub.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest frame accepted from the hub.
const MAX_FRAME_SIZE: u32 = 64 * 1024;

/// Asks the hub of `hub` where its built-in endpoint is and returns the Event Hubs connection
/// string to read it with.
pub(crate) async fn resolve(
    config: &SourceConfig,
    hub: &IotHubConnectionString,
) -> Result<ConnectionString> {
    let failed = |problem: String| Error::IotHubResolve {
        host: hub.host_name.clone(),
        problem,
    };
    let policy = hub
        .policy
        .as_ref()
        .ok_or_else(|| failed("the connection string has no SharedAccessKeyName".to_owned()))?;
    let redirect = tokio::time::timeout(RESOLVE_TIMEOUT, redirect(config, hub, policy))
        .await
        .map_err(|_| failed(format!("no redirect within {RESOLVE_TIMEOUT:?}")))??;
    let endpoint = iothub_amqp::event_hubs_endpoint(
        redirect.hostname.as_deref(),
        redirect.network_host.as_deref(),
        redirect.port,
        redirect.address.as_deref(),
    )
    .map_err(|error| failed(error.to_string()))?;
    let resolved = ConnectionString {
        host: endpoint.host,
        port: endpoint.port,
        entity_path: Some(endpoint.event_hub),
        key: Some(policy.clone()),
        shared_access_signature: None,
        use_development_emulator: hub.use_development_emulator,
    };
    tracing::info!(
        iot_hub = %hub.host_name,
        endpoint = %format!(
            "sb://{}{}/",
            resolved.host,
            resolved.port.map(|port| format!(":{port}")).unwrap_or_default()
        ),
        event_hub = resolved.entity_path.as_deref().unwrap_or_default(),
        policy = %policy.name,
        "resolved the IoT hub's built-in endpoint (Event Hubs-compatible)"
    );
    Ok(resolved)
}

/// Connects to the hub, signs in and attaches to `messages/events` until the hub redirects.
async fn redirect(
    config: &SourceConfig,
    hub: &IotHubConnectionString,
    policy: &SasKey,
) -> Result<Redirect> {
    let host_name = hub.host_name.as_str();
    let failed = |problem: String| Error::IotHubResolve {
        host: host_name.to_owned(),
        problem,
    };
    let (host, port) = iothub_amqp::split_host_port(host_name)?;
    let tls = !hub.use_development_emulator;
    let endpoint = Endpoint {
        host,
        port,
        tls,
        websocket_path: IOT_HUB_WEBSOCKET_PATH,
    };
    let stream = connect(endpoint, config).await.map_err(failed)?;
    let lifetime = i64::try_from(TOKEN_LIFETIME.as_secs()).unwrap_or(300);
    let expiry = chrono::Utc::now().timestamp() + lifetime;
    let token = iothub::sign(
        policy,
        &iothub_amqp::token_audience(host_name),
        expiry,
        true,
    )?;
    let client = ClientConfig {
        container_id: format!("hubroute-{}", uuid::Uuid::new_v4().simple()),
        hostname: host.to_owned(),
        sasl: SaslCredentials::Plain {
            username: iothub_amqp::sasl_plain_user(&policy.name, host),
            password: token.as_str().to_owned(),
        },
        max_frame_size: MAX_FRAME_SIZE,
        idle_timeout: IDLE_TIMEOUT,
    };
    let refused = |error: hubroute_amqp::Error| classify(host_name, &policy.name, &error);
    let mut connection = ClientConnection::open(stream, &client)
        .await
        .map_err(refused)?;
    let outcome = match connection
        .attach(built_in_endpoint_link(host_name, tls))
        .await
    {
        Err(hubroute_amqp::Error::Redirected { redirect, .. }) => Ok(redirect),
        Err(error) => Err(refused(error)),
        Ok((handle, _)) => {
            connection.grant(handle, 1);
            wait_for_redirect(&mut connection, host_name, &policy.name).await
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), connection.close()).await;
    outcome
}

/// After an attach the hub accepted, the redirect comes as its detach.
async fn wait_for_redirect(
    connection: &mut ClientConnection,
    host_name: &str,
    policy: &str,
) -> Result<Redirect> {
    let refused = |error: hubroute_amqp::Error| classify(host_name, policy, &error);
    connection.flush().await.map_err(refused)?;
    loop {
        while let Some(event) = connection.next_event().map_err(refused)? {
            match event {
                Event::Detached { error, .. } => {
                    let Some(error) = error else {
                        return Err(Error::IotHubResolve {
                            host: host_name.to_owned(),
                            problem: "the hub detached `messages/events` without a redirect"
                                .to_owned(),
                        });
                    };
                    return match Redirect::from_error(&error) {
                        Some(redirect) => Ok(redirect),
                        None => Err(refused(hubroute_amqp::Error::Refused {
                            what: "the attach to messages/events".to_owned(),
                            condition: Some(hubroute_amqp::client::condition_text(
                                &error.condition,
                            )),
                            description: error.description,
                        })),
                    };
                }
                Event::Delivery(_) => {
                    return Err(Error::IotHubResolve {
                        host: host_name.to_owned(),
                        problem: "the host sent events on `messages/events` instead of a redirect: it \
                                  is not an IoT hub; give its Event Hubs connection string (Endpoint=…)"
                            .to_owned(),
                    });
                }
                Event::Flow { .. } | Event::Disposition(_) => {}
            }
        }
        connection.fill().await.map_err(refused)?;
    }
}

/// What a failure to sign in or attach means: the hub refusing the policy, or anything else.
fn classify(host_name: &str, policy: &str, error: &hubroute_amqp::Error) -> Error {
    let unauthorized = |problem: String| Error::IotHubUnauthorized {
        host: host_name.to_owned(),
        policy: policy.to_owned(),
        problem,
    };
    match error {
        hubroute_amqp::Error::Refused { what, .. } if what == "SASL authentication" => {
            unauthorized(
                "SASL PLAIN sign-in failed (a wrong key, an unknown policy, or a clock far off)"
                    .to_owned(),
            )
        }
        hubroute_amqp::Error::Refused {
            condition: Some(condition),
            description,
            ..
        } if condition == conditions::UNAUTHORIZED_ACCESS
            || condition == conditions::AUTH_FAILED =>
        {
            unauthorized(format!(
                "{condition}{}",
                description
                    .as_ref()
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default()
            ))
        }
        _ => Error::IotHubResolve {
            host: host_name.to_owned(),
            problem: error.to_string(),
        },
    }
}

/// The receiver the samples attach to be redirected: source
/// `amqps://<host>/messages/events/$management`, pre-settled.
fn built_in_endpoint_link(host_name: &str, tls: bool) -> Attach {
    let name = format!("hubroute-resolve-{}", uuid::Uuid::new_v4().simple());
    let scheme = if tls { "amqps" } else { "amqp" };
    Attach {
        name,
        handle: 0.into(),
        role: Role::Receiver,
        snd_settle_mode: SenderSettleMode::Settled,
        rcv_settle_mode: ReceiverSettleMode::First,
        source: Some(Box::new(Source {
            address: Some(iothub_amqp::built_in_endpoint_address(host_name, tls)),
            ..Source::default()
        })),
        target: Some(Box::new(TargetArchetype::Target(Target {
            address: Some(format!(
                "{scheme}://{host_name}/{}",
                iothub_amqp::BUILT_IN_ENDPOINT
            )),
            ..Target::default()
        }))),
        unsettled: None,
        incomplete_unsettled: false,
        initial_delivery_count: None,
        max_message_size: None,
        offered_capabilities: None,
        desired_capabilities: None,
        properties: None,
    }
}
