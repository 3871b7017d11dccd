"""Google ADK's session service on sessionstore: :class:`SessionStoreSessionService`.

::

    from sessionstore.integrations.adk import SessionStoreSessionService

    runner = Runner(app_name="app", agent=agent, session_service=SessionStoreSessionService(store))

The mapping (docs/integrations/adk.md has the whole of it):

- an ADK session, keyed by ``(app_name, user_id, session_id)``, is a sessionstore session
  of ``user_id`` plus one conversation bound to it, whose continuation id
  (:func:`continuation_id`) encodes the three keys;
- each event is one message of that conversation (and one turn of the session): its
  content is the event's JSON as ADK writes it, its metadata a few facts about it;
- state lives in the ``adk_session_states``, ``adk_app_states`` and ``adk_user_states``
  tables (revision 0008), read and written for all three scopes in one statement by the
  store's ``states`` repository (:class:`~sessionstore.repositories.StatesRepository`); an event's
  state delta is written in its turn's transaction through ``add_turn``'s ``after`` hook.

The modules: ``service`` (the service), ``keys`` (keys, continuation ids, event slots,
revision markers), ``state`` (state keys split by scope and merged back), ``events``
(events as messages), ``reads`` (paged reads), ``binding`` (which session owns an ADK
key) and ``cache`` (what one service keeps in this process).

Needs the ``adk`` extra (``google-adk``).
"""

from .events import EVENT_KIND
from .keys import continuation_id
from .service import SessionStoreSessionService

__all__ = ["EVENT_KIND", "SessionStoreSessionService", "continuation_id"]
