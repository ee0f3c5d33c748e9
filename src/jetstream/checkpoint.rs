//! The correlator's checkpoint in the key-value bucket `FARMWATCH_STATE`: the account stage's
//! state (opaque bytes), gzip-compressed, with the stream sequence it reflects.
//!
//! A state may be larger than the server's `max_payload` (1 MiB by default), so it is stored
//! as chunks under `<consumer>.<generation>.<n>` and a small manifest under `<consumer>`,
//! written last. A crash while writing chunks leaves the previous manifest pointing at the
//! previous generation's chunks, which are purged only after the new manifest is stored; the
//! manifest's SHA-256 of the compressed bytes catches anything else.

use std::io::{Read, Write};

use async_nats::jetstream::{self, kv, stream};
use flate2::Compression;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Error, STATE_BUCKET, err};

/// Well under the default 1 MiB `max_payload`, leaving room for headers.
const CHUNK: usize = 512 * 1024;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Manifest {
    /// The last stream sequence the state includes.
    pub seq: u64,
    pub generation: u64,
    pub chunks: usize,
    /// Compressed length and its SHA-256 (hex).
    pub bytes: usize,
    pub sha256: String,
}

/// Opens the bucket, creating it on first use (history 1: only the newest value matters).
/// The bucket's stream is created here with the settings `async-nats` gives a bucket, because
/// its own `create_key_value` first asks for account details nats-server 2.9 does not send.
pub(super) async fn bucket(js: &jetstream::Context, replicas: usize) -> Result<kv::Store, Error> {
    if let Ok(store) = js.get_key_value(STATE_BUCKET).await {
        return Ok(store);
    }
    let created = js
        .create_stream(stream::Config {
            name: format!("KV_{STATE_BUCKET}"),
            description: Some("farmwatch correlate checkpoints".to_string()),
            subjects: vec![format!("$KV.{STATE_BUCKET}.>")],
            max_messages_per_subject: 1,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            discard: stream::DiscardPolicy::New,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            ..Default::default()
        })
        .await;
    // Another correlator may have created it meanwhile: only opening decides.
    js.get_key_value(STATE_BUCKET)
        .await
        .map_err(|e| match created {
            Err(c) => err("creating key-value bucket FARMWATCH_STATE")(c),
            Ok(_) => err("opening key-value bucket FARMWATCH_STATE")(e),
        })
}

pub(super) async fn manifest(store: &kv::Store, key: &str) -> Result<Option<Manifest>, Error> {
    let Some(bytes) = store
        .get(key)
        .await
        .map_err(err("reading checkpoint manifest"))?
    else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| Error::new(format!("checkpoint {key}: malformed manifest: {e}")))
}

/// Stores `state` as the checkpoint at `seq`, replacing `previous`; returns the new manifest.
pub(super) async fn save(
    store: &kv::Store,
    key: &str,
    previous: Option<&Manifest>,
    seq: u64,
    state: &[u8],
) -> Result<Manifest, Error> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), Compression::fast());
    let packed = gz
        .write_all(state)
        .and_then(|_| gz.finish())
        .map_err(|e| Error::new(format!("compressing checkpoint: {e}")))?;
    let generation = previous.map_or(1, |m| m.generation + 1);
    let chunks: Vec<&[u8]> = packed.chunks(CHUNK).collect();
    for (n, chunk) in chunks.iter().enumerate() {
        store
            .put(format!("{key}.{generation}.{n}"), chunk.to_vec().into())
            .await
            .map_err(err("writing checkpoint"))?;
    }
    let manifest = Manifest {
        seq,
        generation,
        chunks: chunks.len(),
        bytes: packed.len(),
        sha256: hex(&Sha256::digest(&packed)),
    };
    let text = serde_json::to_vec(&manifest).map_err(|e| Error::new(e.to_string()))?;
    store
        .put(key, text.into())
        .await
        .map_err(err("writing checkpoint manifest"))?;
    if let Some(old) = previous {
        for n in 0..old.chunks {
            // A leftover chunk only costs space: no manifest names it any more.
            let _ = store.purge(format!("{key}.{}.{n}", old.generation)).await;
        }
    }
    Ok(manifest)
}

/// Reads the checkpoint `manifest` names and returns the uncompressed state.
pub(super) async fn load(store: &kv::Store, key: &str, m: &Manifest) -> Result<Vec<u8>, Error> {
    let mut packed = Vec::with_capacity(m.bytes);
    for n in 0..m.chunks {
        let chunk_key = format!("{key}.{}.{n}", m.generation);
        let chunk = store
            .get(chunk_key.as_str())
            .await
            .map_err(err("reading checkpoint"))?
            .ok_or_else(|| Error::new(format!("checkpoint {key}: chunk {chunk_key} missing")))?;
        packed.extend_from_slice(&chunk);
    }
    if packed.len() != m.bytes || hex(&Sha256::digest(&packed)) != m.sha256 {
        return Err(Error::new(format!(
            "checkpoint {key} (sequence {}): chunks do not match the manifest",
            m.seq
        )));
    }
    let mut state = Vec::new();
    flate2::read::GzDecoder::new(packed.as_slice())
        .read_to_end(&mut state)
        .map_err(|e| Error::new(format!("checkpoint {key}: {e}")))?;
    Ok(state)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
