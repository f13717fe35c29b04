//! Records as the app sees them: Kinesis records, with KPL-aggregated ones split into their
//! user records.

pub mod aggregation;
pub mod reader;
