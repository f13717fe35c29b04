//! Records as the app sees them: Kinesis records, with KPL-aggregated ones split into their
//! user records, read by polling ([`reader`]) or pushed by enhanced fan-out ([`fanout`]).

pub mod aggregation;
pub mod fanout;
pub mod reader;
pub mod wire;

use reader::{Batch, ReadError};

/// A shard's reader, polling or fan-out.
#[derive(Debug)]
pub enum ShardSource {
    /// GetRecords in a loop.
    Polling(Box<reader::ShardReader>),
    /// SubscribeToShard.
    FanOut(Box<fanout::FanOutReader>),
}

impl ShardSource {
    /// The shard.
    pub fn shard_id(&self) -> &str {
        match self {
            Self::Polling(r) => r.shard_id(),
            Self::FanOut(r) => r.shard_id(),
        }
    }

    /// Is part of the last read still to be handed out (a page of KPL aggregates expanded
    /// part by part)? The next batch then makes no call.
    pub fn has_pending(&self) -> bool {
        match self {
            Self::Polling(r) => r.has_pending(),
            Self::FanOut(r) => r.has_pending(),
        }
    }

    /// Reads refused for a read limit (and retried) so far; fan-out has no such limit.
    pub fn throttles(&self) -> u64 {
        match self {
            Self::Polling(r) => r.throttles(),
            Self::FanOut(_) => 0,
        }
    }

    /// Was the shard's end read by polling (its last records, then the end, come next)?
    pub fn ended(&self) -> bool {
        match self {
            Self::Polling(r) => r.ended(),
            Self::FanOut(_) => false,
        }
    }

    /// Does the stream push records (no polling pace to keep)?
    pub fn pushes(&self) -> bool {
        matches!(self, Self::FanOut(_))
    }

    /// The next batch.
    ///
    /// # Errors
    /// [`ReadError`] for what retrying cannot fix.
    pub async fn next_batch(&mut self) -> Result<Batch, ReadError> {
        match self {
            Self::Polling(r) => r.next_batch().await,
            Self::FanOut(r) => r.next_batch().await,
        }
    }
}
