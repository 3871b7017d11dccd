"""Every public name of the API is covered by a fuzz property (in the modules beside this
one)."""

from __future__ import annotations

import sessionstore
from sessionstore import AddTurnOptions, MessageOptions, SessionStore, TurnOptions, UserView
from sessionstore.repositories import (
    ConversationsRepository,
    MessagesRepository,
    SessionsRepository,
    StatesRepository,
)
from sessionstore.writebehind.repository import (
    QueuedConversationsRepository,
    QueuedMessagesRepository,
)

# --- every public method is covered -------------------------------------------------------------

#: The public names of each class, and where the fuzz exercises them.
COVERED: dict[str, set[str]] = {
    "SessionStore": {
        "sessions",  # test_sessions_*
        "conversations",  # test_conversations*, test_forks
        "messages",  # test_messages, test_write_behind
        "add_turn",  # test_add_turn, test_foreign_rows
        "rotate_master_key",  # integration/store/test_encryption (hostile new, batch_size)
        "encrypt_stored",  # integration/store/test_encryption (hostile batch_size, on_progress)
        "count_unencrypted",  # no arguments; integration/cli/test_encrypt
        "purge_user",  # test_purge_user
        "prune",  # test_prune (and test_prune_as_user)
        "count_prunable",  # test_prune (the dry run)
        "enqueue_turn",  # test_write_behind
        "flush",  # test_write_behind, test_store_lifecycle
        "open",  # test_store_lifecycle
        "close",  # test_store_lifecycle
        "stats",  # test_store_lifecycle, test_write_behind
        "failed_writes",  # test_store_lifecycle, test_write_behind
        "pooler",  # test_store_lifecycle
        "config",  # test_store_lifecycle, test_connect
        "replay",  # test_replay
        "as_user",  # test_as_user
        "states",  # test_states
    },
    "UserView": {
        "sessions",
        "conversations",
        "messages",
        "add_turn",
        "purge_user",
        "prune",
        "count_prunable",  # test_prune (the dry run)
        "user_id",
        "states",  # test_states runs on the store: the same repository class
    },
    "SessionsRepository": {
        "create",
        "get",
        "update",
        "record_turn",
        "extend",
        "pause",
        "resume",
        "complete",
        "list",
        "delete",
        "cleanup_expired",
        "count_expired",
    },
    "ConversationsRepository": {
        "get_or_create",
        "get",
        "get_by_continuation_id",
        "delete",
        "list_for_session",
        "fork",  # test_forks (as_user: tests/integration/schema/test_fork_rls.py)
    },
    "QueuedConversationsRepository": {
        "get_or_create",
        "get",
        "get_by_continuation_id",
        "delete",
        "list_for_session",
        "fork",  # test_forks
    },
    "MessagesRepository": {"add", "add_many", "history", "count", "pop", "clear", "compact"},
    "StatesRepository": {"read", "write"},  # test_states
    "QueuedMessagesRepository": {
        "add",
        "add_many",
        "history",
        "count",
        "pop",
        "clear",
        "compact",  # test_compaction
        "enqueue",
        "enqueue_nowait",
    },
}


#: The keyword options of the appends (TypedDicts), and the properties that fuzz them.
OPTIONS_COVERED: dict[str, set[str]] = {
    "MessageOptions": {"metadata", "tokens"},  # test_messages, test_write_behind
    "TurnOptions": {"metadata", "tokens", "session_id"},  # test_write_behind (enqueue_turn)
    "AddTurnOptions": {
        "metadata",
        "tokens",
        "session_id",
        "message_id",
        "context",
        "context_tokens",
    },
}


def public_names(obj: object) -> set[str]:
    return {name for name in dir(obj) if not name.startswith("_")}


async def test_every_public_method_is_fuzzed() -> None:
    """A public method added to these classes without a property here fails this test."""
    store = sessionstore.connect("postgresql://fuzz@127.0.0.1:1/fuzz")  # never opened
    instances: dict[str, object] = {
        "SessionStore": store,
        "UserView": store.as_user("fuzz-user"),
        "SessionsRepository": store.sessions,
        "ConversationsRepository": store.as_user("fuzz-user").conversations,
        "QueuedConversationsRepository": store.conversations,
        "MessagesRepository": store.as_user("fuzz-user").messages,
        "QueuedMessagesRepository": store.messages,
        "StatesRepository": store.states,
    }
    kinds = {
        "SessionStore": SessionStore,
        "UserView": UserView,
        "SessionsRepository": SessionsRepository,
        "ConversationsRepository": ConversationsRepository,
        "QueuedConversationsRepository": QueuedConversationsRepository,
        "MessagesRepository": MessagesRepository,
        "QueuedMessagesRepository": QueuedMessagesRepository,
        "StatesRepository": StatesRepository,
    }
    for name, instance in instances.items():
        assert type(instance) is kinds[name]
        missing = public_names(instance) - COVERED[name]
        assert not missing, f"{name} has public names the fuzz does not cover: {sorted(missing)}"
        gone = COVERED[name] - public_names(instance)
        assert not gone, f"{name} no longer has {sorted(gone)}: update COVERED"
    for kind in (MessageOptions, TurnOptions, AddTurnOptions):
        keys = set(kind.__optional_keys__) | set(kind.__required_keys__)
        assert keys == OPTIONS_COVERED[kind.__name__], f"{kind.__name__} options changed: {keys}"
