//! [`Chat`]: a multi-turn conversation on one session, prefilling only each turn's new
//! tokens.

use super::{GenerateOptions, Generation};
use crate::chat::ChatMessage;
use crate::error::{Error, Result};
use crate::session::Session;
use crate::tokenizer::Tokenizer;

/// A multi-turn conversation on one session. Each turn renders the whole conversation
/// with the chat template and runs only the tokens the KV cache does not already hold:
/// the longest common prefix of the new render and the cached tokens is kept, the rest
/// (the end of the last reply as the template writes it, and the new message) is
/// prefilled. When the template rewrites earlier turns (e.g. drops old reasoning), the
/// cache is cut back to where the texts first differ.
///
/// ```no_run
/// # fn main() -> moestream::Result<()> {
/// use moestream::{Chat, GenerateOptions, Model, Tokenizer};
/// let dir = "path/to/Qwen3-30B-A3B";
/// let model = Model::open(dir)?;
/// let mut chat = Chat::new(model.session(8192)?, Tokenizer::from_dir(dir)?, GenerateOptions::default());
/// for question in ["Hi! Who are you?", "What did I just ask?"] {
///     for event in chat.send(question)? {
///         print!("{}", event?.text());
///     }
///     println!();
/// }
/// # Ok(()) }
/// ```
pub struct Chat {
    session: Session,
    tokenizer: Tokenizer,
    options: GenerateOptions,
    messages: Vec<ChatMessage>,
    /// The ids in the session's KV cache.
    context: Vec<u32>,
}

impl std::fmt::Debug for Chat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chat")
            .field("messages", &self.messages.len())
            .field("cached_tokens", &self.context.len())
            .finish()
    }
}

impl Chat {
    /// A conversation on `session` (which is reset).
    pub fn new(mut session: Session, tokenizer: Tokenizer, options: GenerateOptions) -> Self {
        session.reset();
        Chat {
            session,
            tokenizer,
            options,
            messages: Vec::new(),
            context: Vec::new(),
        }
    }

    /// Adds a message without generating (a system prompt, or an earlier exchange).
    pub fn push(&mut self, message: ChatMessage) {
        self.messages.push(message);
    }

    /// Adds a user message and generates the reply, which joins the conversation when the
    /// generation finishes (also when cancelled; not when the iterator is dropped first).
    /// If the render fails (e.g. the template rejects the conversation), the message is
    /// not kept.
    pub fn send(&mut self, user: impl Into<String>) -> Result<Generation<'_>> {
        self.messages.push(ChatMessage::user(user));
        match self.prepare() {
            Ok((ids, keep)) => self.run(ids, keep),
            Err(e) => {
                self.messages.pop();
                Err(e)
            }
        }
    }

    /// Generates the assistant's reply to the conversation as it is.
    pub fn respond(&mut self) -> Result<Generation<'_>> {
        let (ids, keep) = self.prepare()?;
        self.run(ids, keep)
    }

    /// The prompt ids of the conversation and how many of them the cache already holds.
    fn prepare(&mut self) -> Result<(Vec<u32>, usize)> {
        let chat = self.options.chat.clone().with_generation_prompt(true);
        let ids = self.tokenizer.encode_chat(&self.messages, &chat)?;
        if ids.is_empty() {
            return Err(Error::InvalidArgument(
                "the chat template rendered an empty prompt".into(),
            ));
        }
        if self.context.len() != self.session.position() {
            // The session was used behind our back: start over.
            self.session.reset();
            self.context.clear();
        }
        let common = self
            .context
            .iter()
            .zip(&ids)
            .take_while(|(a, b)| a == b)
            .count();
        // At least one token must run to get logits.
        let keep = common.min(ids.len() - 1);
        // Fail before touching the cache if the turn cannot run.
        if ids.len() > self.session.max_context() {
            return Err(Error::ContextOverflow {
                needed: ids.len(),
                capacity: self.session.max_context(),
            });
        }
        self.options.validate_for(&self.session)?;
        let mut keep = keep;
        if keep < self.context.len() {
            keep = self.session.truncate_context(keep);
            self.context.truncate(keep);
        }
        Ok((ids, keep))
    }

    fn run(&mut self, ids: Vec<u32>, keep: usize) -> Result<Generation<'_>> {
        Generation::start(
            &mut self.session,
            &self.tokenizer,
            Some(&mut self.context),
            Some(&mut self.messages),
            &ids,
            keep,
            &self.options,
        )
    }

    /// Forgets the conversation and empties the KV cache.
    pub fn reset(&mut self) {
        self.messages.clear();
        self.context.clear();
        self.session.reset();
    }

    /// The conversation so far.
    pub fn messages(&self) -> &[ChatMessage] {
        &self.messages
    }

    /// The conversation, to edit (e.g. to drop or rewrite turns); the next turn reuses
    /// the KV cache up to the first token that changed.
    pub fn messages_mut(&mut self) -> &mut Vec<ChatMessage> {
        &mut self.messages
    }

    /// Tokens held in the KV cache.
    pub fn cached_tokens(&self) -> usize {
        self.context.len()
    }

    /// The session.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The generation options of the next turns.
    pub fn options_mut(&mut self) -> &mut GenerateOptions {
        &mut self.options
    }

    /// The session back (its context holds the conversation's tokens).
    pub fn into_session(self) -> Session {
        self.session
    }
}
