//! Protobuf values in and out of etcd: one schema for the wire and for storage.

use prost::Message;

#[derive(Debug, thiserror::Error)]
#[error("decode {kind} at {key}")]
pub struct DecodeError {
    pub key: String,
    pub kind: &'static str,
    #[source]
    pub source: prost::DecodeError,
}

/// Decodes the value stored at `key` as a `T`.
pub fn decode<T: Message + Default>(key: &[u8], value: &[u8]) -> Result<T, DecodeError> {
    T::decode(value).map_err(|source| DecodeError {
        key: String::from_utf8_lossy(key).into_owned(),
        kind: std::any::type_name::<T>()
            .rsplit("::")
            .next()
            .unwrap_or("message"),
        source,
    })
}

/// Decodes every value of a range read, skipping (and logging) values that do not decode,
/// so one corrupt key cannot stop a component from seeing the rest.
pub fn decode_all<T: Message + Default>(kvs: &[etcd_client::KeyValue]) -> Vec<T> {
    kvs.iter()
        .filter_map(|kv| match decode::<T>(kv.key(), kv.value()) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!(error = %e, "skipping undecodable value");
                None
            }
        })
        .collect()
}

pub fn encode<T: Message>(msg: &T) -> Vec<u8> {
    msg.encode_to_vec()
}
