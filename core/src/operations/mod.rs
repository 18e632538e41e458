//! Operations (SPEC §3.3–3.6): what happens to a request after the handshake,
//! from its envelope checks to its single reply.
//!
//! - `dispatch`: envelope checks, `cancel` and routing (§3.3);
//! - `op`: the operation names;
//! - `ops`: per-operation sandbox policy, schema and allow-lists (§3.4–3.6);
//! - `task`, `tasks`: a request waiting on effects, and the table that
//!   allocates every effect id with the task and result kind it expects;
//! - `work`: carrying a task through its effects to its answer;
//! - `stats`: `get_bucket_stats`.

pub(crate) mod dispatch;
pub mod op;
pub(crate) mod ops;
pub(crate) mod stats;
pub(crate) mod task;
pub(crate) mod tasks;
pub(crate) mod work;
