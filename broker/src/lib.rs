//! The MQTT side of Parley: the gate that devices connect to, and the embedded
//! rumqttd bus behind it.

pub mod bus;
pub mod gate;
