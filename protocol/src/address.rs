//! Node addresses of an event hub: `<hub>`, `<hub>/Partitions/<id>` for producers and
//! `<hub>/ConsumerGroups/<cg>/Partitions/<id>` for consumers.
//!
//! SDKs send either the bare path or an absolute `amqp[s]://host/path` URI; [`EntityAddress::parse`]
//! accepts both. Segment keywords are matched case-insensitively, as Event Hubs does.

use std::fmt;

/// The consumer group every event hub has (the one clients read when none is configured).
pub const DEFAULT_CONSUMER_GROUP: &str = "$Default";

/// What a link address points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntityAddress {
    /// `<hub>`: send, partition chosen by the service.
    EventHub {
        /// Event hub name.
        hub: String,
    },
    /// `<hub>/Partitions/<id>`: send to one partition.
    Partition {
        /// Event hub name.
        hub: String,
        /// Partition id.
        partition: String,
    },
    /// `<hub>/ConsumerGroups/<cg>/Partitions/<id>`: receive.
    ConsumerPartition {
        /// Event hub name.
        hub: String,
        /// Consumer group name.
        consumer_group: String,
        /// Partition id.
        partition: String,
    },
    /// `$cbs`.
    Cbs,
    /// `$management`.
    Management,
}

impl EntityAddress {
    /// Parses a link address; `None` if it is none of the known shapes.
    pub fn parse(address: &str) -> Option<Self> {
        let path = match address.split_once("://") {
            Some((_, rest)) => rest.split_once('/').map_or("", |(_, path)| path),
            None => address,
        };
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let is = |segment: &str, keyword: &str| segment.eq_ignore_ascii_case(keyword);
        match segments.as_slice() {
            [node] if *node == crate::cbs::NODE => Some(Self::Cbs),
            [node] if *node == crate::management::NODE => Some(Self::Management),
            [hub] if !hub.is_empty() => Some(Self::EventHub {
                hub: (*hub).to_owned(),
            }),
            [hub, p, id] if is(p, "Partitions") && !id.is_empty() => Some(Self::Partition {
                hub: (*hub).to_owned(),
                partition: (*id).to_owned(),
            }),
            [hub, c, cg, p, id]
                if is(c, "ConsumerGroups") && is(p, "Partitions") && !id.is_empty() =>
            {
                Some(Self::ConsumerPartition {
                    hub: (*hub).to_owned(),
                    consumer_group: (*cg).to_owned(),
                    partition: (*id).to_owned(),
                })
            }
            _ => None,
        }
    }

    /// The event hub named in the address, if any.
    pub fn hub(&self) -> Option<&str> {
        match self {
            Self::EventHub { hub }
            | Self::Partition { hub, .. }
            | Self::ConsumerPartition { hub, .. } => Some(hub),
            Self::Cbs | Self::Management => None,
        }
    }
}

impl fmt::Display for EntityAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EventHub { hub } => write!(f, "{hub}"),
            Self::Partition { hub, partition } => write!(f, "{hub}/Partitions/{partition}"),
            Self::ConsumerPartition {
                hub,
                consumer_group,
                partition,
            } => write!(
                f,
                "{hub}/ConsumerGroups/{consumer_group}/Partitions/{partition}"
            ),
            Self::Cbs => f.write_str(crate::cbs::NODE),
            Self::Management => f.write_str(crate::management::NODE),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_shape_relative_and_absolute() {
        let consumer = EntityAddress::ConsumerPartition {
            hub: "hub".into(),
            consumer_group: "$Default".into(),
            partition: "3".into(),
        };
        let cases = [
            ("hub", Some(EntityAddress::EventHub { hub: "hub".into() })),
            (
                "hub/Partitions/1",
                Some(EntityAddress::Partition {
                    hub: "hub".into(),
                    partition: "1".into(),
                }),
            ),
            (
                "hub/ConsumerGroups/$Default/Partitions/3",
                Some(consumer.clone()),
            ),
            (
                "amqps://ns.servicebus.windows.net/hub/consumergroups/$Default/partitions/3",
                Some(consumer.clone()),
            ),
            ("$cbs", Some(EntityAddress::Cbs)),
            ("$management", Some(EntityAddress::Management)),
            ("hub/Partitions/", None),
            ("hub/Nope/1", None),
            ("", None),
        ];
        for (text, expected) in cases {
            assert_eq!(EntityAddress::parse(text), expected, "{text}");
        }
        assert_eq!(
            consumer.to_string(),
            "hub/ConsumerGroups/$Default/Partitions/3"
        );
    }
}
