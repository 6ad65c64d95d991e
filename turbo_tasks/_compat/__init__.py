"""The third-party internals turbo_tasks relies on, each behind one small function, one
module per library:

- ``db``: Django's ``on_commit`` bookkeeping, a queryset's write routing;
- ``consumer``: Channels' ``AsyncConsumer`` (its channel receive, its dispatch) and
  ``AsyncWebsocketConsumer`` (its disconnect handler);
- ``layers``: channels_redis (where a group lives, its receive) and redis-py timeouts;
- ``kombu``: the Redis transport's task message, which turbo_tasks.publish writes itself.

tests/test_compat.py pins every behaviour used here against the installed versions (the
kombu layout: tests/test_publish.py, against ``send_task``), so an upgrade that changes one
fails there, by name, instead of somewhere downstream. Import this package, not its
modules: ``from turbo_tasks import _compat; _compat.group_connection(...)``.
"""

from turbo_tasks._compat.consumer import (
    dispatch_without_db_cleanup as dispatch_without_db_cleanup,
)
from turbo_tasks._compat.consumer import (
    websocket_disconnect_without_db_cleanup as websocket_disconnect_without_db_cleanup,
)
from turbo_tasks._compat.consumer import (
    wrapped_channel_receive as wrapped_channel_receive,
)
from turbo_tasks._compat.db import (
    last_on_commit_callback as last_on_commit_callback,
)
from turbo_tasks._compat.db import (
    on_commit_callbacks as on_commit_callbacks,
)
from turbo_tasks._compat.db import (
    queryset_routing as queryset_routing,
)
from turbo_tasks._compat.kombu import (
    TaskMessageLayout as TaskMessageLayout,
)
from turbo_tasks._compat.kombu import (
    oldest_redis_messages as oldest_redis_messages,
)
from turbo_tasks._compat.kombu import (
    redis_queue_size as redis_queue_size,
)
from turbo_tasks._compat.kombu import (
    redis_unacked as redis_unacked,
)
from turbo_tasks._compat.layers import (
    RECEIVE_DISCONNECTS as RECEIVE_DISCONNECTS,
)
from turbo_tasks._compat.layers import (
    RECEIVE_TIMEOUTS as RECEIVE_TIMEOUTS,
)
from turbo_tasks._compat.layers import (
    REDIS_LAYERS as REDIS_LAYERS,
)
from turbo_tasks._compat.layers import (
    SYNC_TIMEOUT_SECONDS as SYNC_TIMEOUT_SECONDS,
)
from turbo_tasks._compat.layers import (
    alive_since as alive_since,
)
from turbo_tasks._compat.layers import (
    answers as answers,
)
from turbo_tasks._compat.layers import (
    blocking_receive_seconds as blocking_receive_seconds,
)
from turbo_tasks._compat.layers import (
    changes_groups_directly as changes_groups_directly,
)
from turbo_tasks._compat.layers import (
    check_group_change as check_group_change,
)
from turbo_tasks._compat.layers import (
    fit_layer_for_consumers as fit_layer_for_consumers,
)
from turbo_tasks._compat.layers import (
    group_channel as group_channel,
)
from turbo_tasks._compat.layers import (
    group_connection as group_connection,
)
from turbo_tasks._compat.layers import (
    group_key as group_key,
)
from turbo_tasks._compat.layers import (
    has_members as has_members,
)
from turbo_tasks._compat.layers import (
    hosts as hosts,
)
from turbo_tasks._compat.layers import (
    is_redis_core_layer as is_redis_core_layer,
)
from turbo_tasks._compat.layers import (
    is_redis_layer as is_redis_layer,
)
from turbo_tasks._compat.layers import (
    is_redis_pubsub_layer as is_redis_pubsub_layer,
)
from turbo_tasks._compat.layers import (
    lengthen_receive_timeouts as lengthen_receive_timeouts,
)
from turbo_tasks._compat.layers import (
    prefix as prefix,
)
from turbo_tasks._compat.layers import (
    protect_receive as protect_receive,
)
from turbo_tasks._compat.layers import (
    queue_group_add as queue_group_add,
)
from turbo_tasks._compat.layers import (
    queue_group_discard as queue_group_discard,
)
from turbo_tasks._compat.layers import (
    redis_default_socket_timeout as redis_default_socket_timeout,
)
from turbo_tasks._compat.layers import (
    send_to_members as send_to_members,
)
from turbo_tasks._compat.layers import (
    sends_directly as sends_directly,
)
from turbo_tasks._compat.layers import (
    shard_connection as shard_connection,
)
from turbo_tasks._compat.layers import (
    shard_index as shard_index,
)
from turbo_tasks._compat.layers import (
    sync_client as sync_client,
)
