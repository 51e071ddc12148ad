//! What the admin view reads of a local lobby (read-only).

use super::LocalLobby;

impl LocalLobby {
    /// The lobby's spectators as of the last event that said (every node's;
    /// exact in memory mode, where this node is the whole store).
    pub fn spectators(&self) -> u32 {
        self.lock().spectators
    }
}
