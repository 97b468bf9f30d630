//! An in-memory `Spool` for driving the queue manager in tests. It applies updates the
//! way the contract describes (state replaced, attempt appended) and remembers what was
//! removed, so tests can assert on the final recipient states.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use smtp_node::spool::{MessageId, MessageMeta, Ownership, RecipientUpdate, Spool, SpoolError};

#[derive(Default)]
pub struct MemorySpool {
    messages: Mutex<HashMap<MessageId, (MessageMeta, Bytes)>>,
    removed: Mutex<Vec<MessageMeta>>,
}

impl MemorySpool {
    /// Every message ever removed, with its final state.
    pub fn removed(&self) -> Vec<MessageMeta> {
        self.removed.lock().unwrap().clone()
    }

    pub fn removed_meta(&self, id: MessageId) -> Option<MessageMeta> {
        self.removed().into_iter().find(|m| m.id == id)
    }

    pub fn current(&self, id: MessageId) -> Option<MessageMeta> {
        self.messages
            .lock()
            .unwrap()
            .get(&id)
            .map(|(m, _)| m.clone())
    }

    pub fn len(&self) -> usize {
        self.messages.lock().unwrap().len()
    }

    /// Current or final state, whichever exists.
    pub fn meta(&self, id: MessageId) -> Option<MessageMeta> {
        self.current(id).or_else(|| self.removed_meta(id))
    }
}

impl Spool for MemorySpool {
    async fn store(&self, meta: MessageMeta, body: Bytes) -> Result<(), SpoolError> {
        self.messages.lock().unwrap().insert(meta.id, (meta, body));
        Ok(())
    }

    async fn update(
        &self,
        id: MessageId,
        updates: Vec<RecipientUpdate>,
    ) -> Result<MessageMeta, SpoolError> {
        let mut messages = self.messages.lock().unwrap();
        let (meta, _) = messages.get_mut(&id).ok_or(SpoolError::NotFound(id))?;
        for update in updates {
            let recipient = meta
                .envelope
                .recipients
                .get_mut(update.index)
                .ok_or_else(|| SpoolError::Corrupt(format!("no recipient {}", update.index)))?;
            recipient.state = update.state;
            recipient.attempts.extend(update.attempt);
        }
        Ok(meta.clone())
    }

    async fn set_ownership(&self, id: MessageId, ownership: Ownership) -> Result<(), SpoolError> {
        let mut messages = self.messages.lock().unwrap();
        let (meta, _) = messages.get_mut(&id).ok_or(SpoolError::NotFound(id))?;
        meta.ownership = ownership;
        Ok(())
    }

    async fn remove(&self, id: MessageId) -> Result<(), SpoolError> {
        let removed = self.messages.lock().unwrap().remove(&id);
        match removed {
            Some((meta, _)) => {
                self.removed.lock().unwrap().push(meta);
                Ok(())
            }
            None => Err(SpoolError::NotFound(id)),
        }
    }

    async fn load_meta(&self, id: MessageId) -> Result<Option<MessageMeta>, SpoolError> {
        Ok(self.current(id))
    }

    async fn load_body(&self, id: MessageId) -> Result<Bytes, SpoolError> {
        self.messages
            .lock()
            .unwrap()
            .get(&id)
            .map(|(_, body)| body.clone())
            .ok_or(SpoolError::NotFound(id))
    }

    async fn list(&self) -> Result<Vec<MessageMeta>, SpoolError> {
        Ok(self
            .messages
            .lock()
            .unwrap()
            .values()
            .map(|(m, _)| m.clone())
            .collect())
    }
}
