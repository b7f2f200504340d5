//! The bridge: takes every uplink from the bus (through a shared subscription, so
//! several bridges can split the work), applies the domain rules, stores, and
//! publishes the results to the users' downlink topics. An uplink is
//! acknowledged on the bus only after its downlinks were handed to the bus.

mod uplink;

use std::time::Duration;

use parley_domain::Domain;
use parley_wire::bus::BusEndpoint;
use parley_wire::topics;
use rumqttc::{AsyncClient, Event, Packet, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use uplink::handle_uplink;

/// Runs the bridge until `shutdown`.
pub async fn run(domain: Domain, bus: &BusEndpoint, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut options = bus.options("bridge");
    options.set_manual_acks(true);
    let (client, mut events) = AsyncClient::new(options, 1024);
    let (tx, rx) = mpsc::channel::<rumqttc::Publish>(1024);
    let worker = tokio::spawn(work(domain, client.clone(), rx));
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => break,
            event = events.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                tracing::info!("bridge connected to the bus");
                // rumqttc does not resubscribe after a reconnect; do it on every ConnAck.
                let filters = [topics::BRIDGE_UPLINK_FILTER, topics::BRIDGE_PRESENCE_FILTER];
                let filters = filters.map(|f| rumqttc::SubscribeFilter::new(f.to_string(), QoS::AtLeastOnce));
                if let Err(e) = client.try_subscribe_many(filters) {
                    tracing::error!(error = %e, "bridge could not subscribe to uplinks");
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if tx.send(p).await.is_err() {
                    break;
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "bridge lost the bus; reconnecting");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        }
    }
    drop(tx);
    let _ = tokio::time::timeout(Duration::from_secs(5), worker).await;
    let _ = client.try_disconnect();
    tracing::info!("bridge stopped");
    Ok(())
}

/// Handles uplinks one at a time, in bus order, so acknowledgements stay in order.
async fn work(domain: Domain, client: AsyncClient, mut rx: mpsc::Receiver<rumqttc::Publish>) {
    while let Some(publish) = rx.recv().await {
        for d in handle_uplink(&domain, &publish.topic, &publish.payload).await {
            if let Err(e) = client.publish(d.topic(), d.mqtt_qos(), false, d.payload()).await {
                tracing::error!(error = %e, "bridge could not publish a downlink");
            }
        }
        if let Err(e) = client.ack(&publish).await {
            tracing::warn!(error = %e, "bridge could not acknowledge an uplink");
        }
    }
}
