//! The prompt cache: finished requests' sessions at the end of their prompts, kept by the
//! token ids they hold, so that a new prompt sharing a prefix with one of them skips
//! prefilling that prefix.
//!
//! An entry holds only states that prefill passes computed: its request's session cut
//! back to the end of the prompt ([`Session::truncate`]) once the reply is done, or, for a
//! model whose recurrent states cannot be cut back, a [`Session::fork`] taken right after
//! the prefill, before the first decode step (`super::worker`). A prefill's results do not
//! depend on how a prompt is split into passes (`Pass::decode` in the engine), so a prompt
//! that goes on from an entry gets bit for bit the logits of a fresh prefill of the whole
//! prompt. The reply's tokens are not kept: decode steps compute their states with other
//! kernels (mat-vecs) than a prefill would, and a conversation's next turn prefills them
//! again as part of its prompt.
//!
//! A session whose ids are a prefix of the new prompt is taken as it is (it is superseded
//! by the new request's session when that one finishes). A session that shares only part
//! of its ids is forked and the fork cut back to the shared part, where the model can cut
//! back ([`Session::truncate`]: KV caches can, recurrent states of linear-attention layers
//! cannot, sliding-window rings only by a little); for a model that cannot, only a
//! session holding exactly a prefix of the prompt is reused. Either way at least the
//! prompt's last token runs, for its logits. Entries are charged their
//! [`Session::state_bytes`] against the budget and evicted least recently used first.

use crate::session::Session;

/// A session taken from the cache and the ids it holds (a prefix of the prompt).
pub(crate) struct Reused {
    pub session: Session,
    pub tokens: Vec<u32>,
}

struct Entry {
    tokens: Vec<u32>,
    session: Session,
    bytes: u64,
    used_at: u64,
}

/// The cache; the server keeps it behind a mutex.
pub(crate) struct PromptCache {
    entries: Vec<Entry>,
    budget: u64,
    used: u64,
    clock: u64,
    /// Whether the model's sessions can be cut back (no recurrent state).
    rewind: bool,
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl PromptCache {
    pub fn new(budget: u64, rewind: bool) -> Self {
        PromptCache {
            entries: Vec::new(),
            budget,
            used: 0,
            clock: 0,
            rewind,
        }
    }

    /// Entries kept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the model's sessions can be cut back to a prompt's end (no recurrent
    /// state): else an entry is a fork taken at the prompt's end.
    pub fn rewinds(&self) -> bool {
        self.rewind
    }

    /// Whether an entry of `bytes` could be kept at all (the cache is on and large enough).
    pub fn admits(&self, bytes: u64) -> bool {
        bytes > 0 && bytes <= self.budget
    }

    /// Bytes of sequence state kept.
    pub fn bytes(&self) -> u64 {
        self.used
    }

    /// The longest reusable prefix of `prompt` (leaving at least its last token to run),
    /// or `None`.
    pub fn lookup(&mut self, prompt: &[u32]) -> Option<Reused> {
        let limit = prompt.len().saturating_sub(1);
        let best = self
            .entries
            .iter()
            .enumerate()
            .filter_map(|(i, e)| {
                let shared = common_prefix(&e.tokens, prompt).min(limit);
                let whole = shared == e.tokens.len();
                (shared > 0 && (whole || self.rewind)).then_some((shared, whole, i))
            })
            // Longest first; on a tie, one that needs no copy.
            .max_by_key(|&(shared, whole, i)| (shared, whole, std::cmp::Reverse(i)))?;
        let (shared, whole, i) = best;
        self.clock += 1;
        if whole {
            let e = self.entries.swap_remove(i);
            self.used -= e.bytes;
            return (e.session.position() == e.tokens.len()).then_some(Reused {
                session: e.session,
                tokens: e.tokens,
            });
        }
        let e = &mut self.entries[i];
        e.used_at = self.clock;
        let mut session = e.session.fork().ok()?;
        // A sliding-window ring may refuse a long cut: then there is nothing to reuse.
        session.truncate(shared).ok()?;
        Some(Reused {
            session,
            tokens: e.tokens[..shared].to_vec(),
        })
    }

    /// Keeps a finished request's session holding `tokens` (its prompt), evicting least recently used
    /// entries past the budget. Entries the new one makes redundant are dropped.
    pub fn insert(&mut self, session: Session, tokens: Vec<u32>) {
        let bytes = session.state_bytes();
        if tokens.is_empty() || session.position() != tokens.len() || bytes > self.budget {
            return;
        }
        let rewind = self.rewind;
        if rewind
            && self
                .entries
                .iter()
                .any(|e| e.tokens.len() >= tokens.len() && e.tokens.starts_with(&tokens))
        {
            return; // an entry holding more of the same already serves these prompts
        }
        let mut freed = 0;
        self.entries.retain(|e| {
            let redundant = if rewind {
                tokens.starts_with(&e.tokens)
            } else {
                e.tokens == tokens
            };
            if redundant {
                freed += e.bytes;
            }
            !redundant
        });
        self.used -= freed;
        while self.used + bytes > self.budget {
            let Some(oldest) = self
                .entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.used_at)
                .map(|(i, _)| i)
            else {
                break;
            };
            let e = self.entries.swap_remove(oldest);
            self.used -= e.bytes;
        }
        self.clock += 1;
        self.used += bytes;
        self.entries.push(Entry {
            tokens,
            session,
            bytes,
            used_at: self.clock,
        });
    }
}
