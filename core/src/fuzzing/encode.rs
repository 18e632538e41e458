//! The inverse of the derived `Arbitrary` decoder of [`EngineOp`]s, so
//! seed corpora can be written by hand as typed ops
//! (`core/tests/it/fuzz_corpus.rs`) and still mean what they say.

use super::ops::{
    Callback, Code, Completion, Cut, EngineOp, Hello, HttpAnswer, KeySel, RawFrame, Req, Setup,
    StoreMode, Tick, TokenSel,
};

/// Encodes ops so that [`decode_engine_ops`](super::decode_engine_ops)
/// returns them: the inverse of the derived `Arbitrary` format (each
/// element prefixed by a continue byte, enum tags as `u32` scaled by the
/// variant count, integers little endian). Used to write seed corpora.
#[must_use]
pub fn encode_engine_ops(ops: &[EngineOp]) -> Vec<u8> {
    let mut out = Vec::new();
    for op in ops {
        out.push(1);
        op.enc(&mut out);
    }
    out
}

trait Enc {
    fn enc(&self, out: &mut Vec<u8>);
}

fn tag(out: &mut Vec<u8>, index: u64, count: u64) {
    let t = u32::try_from((index << 32).div_ceil(count)).unwrap_or(u32::MAX);
    out.extend_from_slice(&t.to_le_bytes());
}

impl Enc for u8 {
    fn enc(&self, out: &mut Vec<u8>) {
        out.push(*self);
    }
}

impl Enc for i8 {
    fn enc(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

impl Enc for u16 {
    fn enc(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

impl Enc for i16 {
    fn enc(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

impl Enc for bool {
    fn enc(&self, out: &mut Vec<u8>) {
        out.push(u8::from(*self));
    }
}

impl Enc for [u8; 8] {
    fn enc(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self);
    }
}

impl Enc for EngineOp {
    fn enc(&self, out: &mut Vec<u8>) {
        const N: u64 = 18;
        match self {
            EngineOp::Configure(s) => {
                tag(out, 0, N);
                s.enc(out);
            }
            EngineOp::Open { peer, hello } => {
                tag(out, 1, N);
                peer.enc(out);
                hello.enc(out);
            }
            EngineOp::Request { conn, id, req, cut } => {
                tag(out, 2, N);
                conn.enc(out);
                id.enc(out);
                req.enc(out);
                cut.enc(out);
            }
            EngineOp::Flush { conn, cut } => {
                tag(out, 3, N);
                conn.enc(out);
                cut.enc(out);
            }
            EngineOp::Raw { conn, raw, cut } => {
                tag(out, 4, N);
                conn.enc(out);
                raw.enc(out);
                cut.enc(out);
            }
            EngineOp::Gone { conn } => {
                tag(out, 5, N);
                conn.enc(out);
            }
            EngineOp::HalfClose { conn } => {
                tag(out, 6, N);
                conn.enc(out);
            }
            EngineOp::Pause { conn } => {
                tag(out, 7, N);
                conn.enc(out);
            }
            EngineOp::Resume { conn } => {
                tag(out, 8, N);
                conn.enc(out);
            }
            EngineOp::Complete { index, how } => {
                tag(out, 9, N);
                index.enc(out);
                how.enc(out);
            }
            EngineOp::CompleteAll => tag(out, 10, N),
            EngineOp::Respond { index, answer } => {
                tag(out, 11, N);
                index.enc(out);
                answer.enc(out);
            }
            EngineOp::Store(m) => {
                tag(out, 12, N);
                m.enc(out);
            }
            EngineOp::AutoEffects(b) => {
                tag(out, 13, N);
                b.enc(out);
            }
            EngineOp::FailListen(b) => {
                tag(out, 14, N);
                b.enc(out);
            }
            EngineOp::Loopback { session, kind } => {
                tag(out, 15, N);
                session.enc(out);
                kind.enc(out);
            }
            EngineOp::Tick(t) => {
                tag(out, 16, N);
                t.enc(out);
            }
            EngineOp::Plant {
                key,
                expiry,
                refresh,
            } => {
                tag(out, 17, N);
                key.enc(out);
                expiry.enc(out);
                refresh.enc(out);
            }
        }
    }
}

impl Enc for Setup {
    fn enc(&self, out: &mut Vec<u8>) {
        self.sandbox.enc(out);
        self.strict.enc(out);
        self.allow_lists.enc(out);
        self.small_limits.enc(out);
        self.codex_device.enc(out);
    }
}

impl Enc for Hello {
    fn enc(&self, out: &mut Vec<u8>) {
        const N: u64 = 7;
        match self {
            Hello::Good => tag(out, 0, N),
            Hello::V1 => tag(out, 1, N),
            Hello::Range { min, max } => {
                tag(out, 2, N);
                min.enc(out);
                max.enc(out);
            }
            Hello::NoToken => tag(out, 3, N),
            Hello::WrongToken => tag(out, 4, N),
            Hello::NotHandshake => tag(out, 5, N),
            Hello::Late => tag(out, 6, N),
        }
    }
}

impl Enc for Cut {
    fn enc(&self, out: &mut Vec<u8>) {
        const N: u64 = 4;
        match self {
            Cut::All => tag(out, 0, N),
            Cut::Part(n) => {
                tag(out, 1, N);
                n.enc(out);
            }
            Cut::Hold => tag(out, 2, N),
            Cut::Trickle(n) => {
                tag(out, 3, N);
                n.enc(out);
            }
        }
    }
}

impl Enc for KeySel {
    fn enc(&self, out: &mut Vec<u8>) {
        self.provider.enc(out);
        self.bucket.enc(out);
    }
}

impl Enc for TokenSel {
    fn enc(&self, out: &mut Vec<u8>) {
        const N: u64 = 5;
        match self {
            TokenSel::Valid => tag(out, 0, N),
            TokenSel::Expired => tag(out, 1, N),
            TokenSel::WithRefresh => tag(out, 2, N),
            TokenSel::Invalid => tag(out, 3, N),
            TokenSel::OddExpiry(n) => {
                tag(out, 4, N);
                n.enc(out);
            }
        }
    }
}

impl Enc for Req {
    fn enc(&self, out: &mut Vec<u8>) {
        const N: u64 = 22;
        match self {
            Req::GetToken(k) => {
                tag(out, 0, N);
                k.enc(out);
            }
            Req::SaveToken(k, t) => {
                tag(out, 1, N);
                k.enc(out);
                t.enc(out);
            }
            Req::RemoveToken(k) => {
                tag(out, 2, N);
                k.enc(out);
            }
            Req::ListProviders => tag(out, 3, N),
            Req::ListBuckets(k) => {
                tag(out, 4, N);
                k.enc(out);
            }
            Req::BucketStats(k) => {
                tag(out, 5, N);
                k.enc(out);
            }
            Req::GetApiKey(n) => {
                tag(out, 6, N);
                n.enc(out);
            }
            Req::ListApiKeys => tag(out, 7, N),
            Req::HasApiKey(n) => {
                tag(out, 8, N);
                n.enc(out);
            }
            Req::Cancel(n) => {
                tag(out, 9, N);
                n.enc(out);
            }
            Req::Initiate(k) => {
                tag(out, 10, N);
                k.enc(out);
            }
            Req::Exchange { session, code } => {
                tag(out, 11, N);
                session.enc(out);
                code.enc(out);
            }
            Req::Poll(n) => {
                tag(out, 12, N);
                n.enc(out);
            }
            Req::OauthCancel(n) => {
                tag(out, 13, N);
                n.enc(out);
            }
            Req::Refresh(k) => {
                tag(out, 14, N);
                k.enc(out);
            }
            Req::Unknown => tag(out, 15, N),
            Req::Handshake => tag(out, 16, N),
            Req::MissingId => tag(out, 17, N),
            Req::MissingOp => tag(out, 18, N),
            Req::PayloadNotObject => tag(out, 19, N),
            Req::BadFields => tag(out, 20, N),
            Req::LongField(n) => {
                tag(out, 21, N);
                n.enc(out);
            }
        }
    }
}

impl Enc for Code {
    fn enc(&self, out: &mut Vec<u8>) {
        let i = match self {
            Code::HashState => 0,
            Code::Plain => 1,
            Code::Redirect => 2,
            Code::Forged => 3,
            Code::ErrorUrl => 4,
            Code::Empty => 5,
        };
        tag(out, i, 6);
    }
}

impl Enc for RawFrame {
    fn enc(&self, out: &mut Vec<u8>) {
        const N: u64 = 7;
        match self {
            RawFrame::Junk { len, bytes } => {
                tag(out, 0, N);
                len.enc(out);
                bytes.enc(out);
            }
            RawFrame::Oversize(n) => {
                tag(out, 1, N);
                n.enc(out);
            }
            RawFrame::Empty => tag(out, 2, N),
            RawFrame::InvalidJson => tag(out, 3, N),
            RawFrame::NotObject(n) => {
                tag(out, 4, N);
                n.enc(out);
            }
            RawFrame::BadUtf8 => tag(out, 5, N),
            RawFrame::Trailing => tag(out, 6, N),
        }
    }
}

impl Enc for Completion {
    fn enc(&self, out: &mut Vec<u8>) {
        const N: u64 = 7;
        match self {
            Completion::Store => tag(out, 0, N),
            Completion::Failed => tag(out, 1, N),
            Completion::Missing => tag(out, 2, N),
            Completion::Busy => tag(out, 3, N),
            Completion::WrongKind(n) => {
                tag(out, 4, N);
                n.enc(out);
            }
            Completion::Conflict => tag(out, 5, N),
            Completion::Unavailable(ms) => {
                tag(out, 6, N);
                ms.enc(out);
            }
        }
    }
}

impl Enc for HttpAnswer {
    fn enc(&self, out: &mut Vec<u8>) {
        const N: u64 = 8;
        match self {
            HttpAnswer::Success(n) => {
                tag(out, 0, N);
                n.enc(out);
            }
            HttpAnswer::NoRefresh => tag(out, 1, N),
            HttpAnswer::OauthError(n) => {
                tag(out, 2, N);
                n.enc(out);
            }
            HttpAnswer::Status(n) => {
                tag(out, 3, N);
                n.enc(out);
            }
            HttpAnswer::Transport(n) => {
                tag(out, 4, N);
                n.enc(out);
            }
            HttpAnswer::NotJson => tag(out, 5, N),
            HttpAnswer::NotObject => tag(out, 6, N),
            HttpAnswer::Odd { field, value } => {
                tag(out, 7, N);
                field.enc(out);
                value.enc(out);
            }
        }
    }
}

impl Enc for StoreMode {
    fn enc(&self, out: &mut Vec<u8>) {
        self.fail_writes.enc(out);
        self.fail_all.enc(out);
        self.foreign_lock.enc(out);
        self.unusable.enc(out);
        self.unavailable.enc(out);
    }
}

impl Enc for Callback {
    fn enc(&self, out: &mut Vec<u8>) {
        const N: u64 = 7;
        match self {
            Callback::Code => tag(out, 0, N),
            Callback::Error => tag(out, 1, N),
            Callback::NoCode => tag(out, 2, N),
            Callback::WrongState => tag(out, 3, N),
            Callback::WrongPath => tag(out, 4, N),
            Callback::OtherPort => tag(out, 5, N),
            Callback::Junk(b) => {
                tag(out, 6, N);
                b.enc(out);
            }
        }
    }
}

impl Enc for Tick {
    fn enc(&self, out: &mut Vec<u8>) {
        const N: u64 = 7;
        match self {
            Tick::Ms(n) => {
                tag(out, 0, N);
                n.enc(out);
            }
            Tick::Secs(n) => {
                tag(out, 1, N);
                n.enc(out);
            }
            Tick::Minutes(n) => {
                tag(out, 2, N);
                n.enc(out);
            }
            Tick::Next => tag(out, 3, N),
            Tick::Repeat => tag(out, 4, N),
            Tick::Back(n) => {
                tag(out, 5, N);
                n.enc(out);
            }
            Tick::Wall(n) => {
                tag(out, 6, N);
                n.enc(out);
            }
        }
    }
}
