"""Write-behind: ``enqueue`` and ``enqueue_turn`` accept a message at once and one
background task makes it durable.

- :mod:`.items` — accepting a message (a time-ordered id, the time), why one was set
  aside, the opening every batch statement shares;
- :mod:`.engine` — the ``Writer``: queue, batching, retries, splitting, flush and close;
  it is handed the function that writes a batch and knows no SQL (the batch statements
  live beside the operations they batch: ``turns.TURN_BATCH``,
  ``repositories.messages.MESSAGE_BATCH``);
- :mod:`.readyourwrites` — the writer's unwritten messages by conversation, and how a
  read merges them after the stored ones;
- :mod:`.spill` — the spill file ``close()`` writes and ``replay`` reads;
- :mod:`.repository` — ``QueuedMessagesRepository``: the messages repository with
  ``enqueue`` and read-your-writes; ``QueuedConversationsRepository``, whose ``fork``
  waits for the queued messages.
"""
