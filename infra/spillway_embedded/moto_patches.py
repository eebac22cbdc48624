"""Patches to moto 5.2.x that the embedded stack (and the in-process tests) need.

`apply()` patches moto in the current process; it is idempotent.

1. DynamoDB requests are serialized by one process-wide lock. moto's server runs every request on its
   own thread, and its conditional writes are a read, a check and a write with nothing in between:
   two concurrent `ConditionExpression` updates of one item can both pass. Reads take the lock too: an
   `UpdateExpression` changes the stored item in place, so an unlocked reader could see it half-way (or
   iterate its attributes while they change size). The lock is taken by the request handlers (so a
   write's `ReturnValues` and a read's serialization see one consistent state) and by the backend's
   write methods (for callers inside moto that skip the handlers). It is an RLock: a transaction calls
   `put_item`/`update_item`/`delete_item` under it. The work it serializes holds the GIL anyway.
2. `TransactWriteItems` no longer deep-copies every table it touches (O(table size) per call) nor
   restores whole tables on failure (which erased concurrent writes to other items): it snapshots the
   items it is about to write and restores exactly those. moto's own implementation still runs.
3. Step Functions: the parsed program of a definition is cached, instead of being parsed again (40-120 ms
   of CPU) for every execution. moto's interpreter keeps execution state in the execution's
   `Environment`, not in the program's components (it already shares one program among the iterations of
   a Map state); the one exception, a lazily drawn `heap_key`, is drawn before the program is shared.
4. Step Functions: a callback (SendTaskSuccess ...) no longer fails while another execution is starting.
5. Step Functions: a service integration (DynamoDB, SQS ...) reuses one boto3 client per service and
   region, instead of building a client, an SSL context and a new connection for every call (37% of the
   interpreter's CPU under load), with a connection pool as large as a burst's concurrent calls; and a
   JSONPath is parsed once, not by a freshly built yacc parser on every evaluation (16%). boto3 clients
   are thread-safe; parsed JSONPaths are not mutated by `find`.
6. The server's dispatcher remembers which backend serves a host, instead of scanning every moto module
   on each request (7% of the server's CPU), and each handler class's action names, instead of listing
   the class's members on each request (10% of a GetItem).
7. Step Functions: a `lambda:invoke` Task calls the Lambda Invoke API at $SPILLWAY_LAMBDA_ENDPOINT (the
   embedded runtime, which runs the real handlers) when it is set: moto's own Lambda needs Docker.
8. Step Functions: SendTaskFailure keeps its `cause` (moto's response handler dropped it, so a Catch
   saw `"Cause": null` and a job lost the reason its attempt failed).
9. S3: a browser-form POST upload is held to its signed policy's `content-length-range` and expiration,
   as S3 does (moto stored any file, of any size, at any time): the API's upload limit is the storage's.
10. DynamoDB: a query of a table reads the items under its hash key, not every item of the table, sorted
    (O(table) per call: the waiting room's front was read by sorting every room's entries); a query of an
    index no longer sorts the whole table before it picks and sorts the index's items.
11. DynamoDB: the item operations (GetItem, Query, UpdateItem ...) answer with their result as JSON, as
   moto's protocol serializer would, without walking botocore's shape model for every attribute (18% of
   the server's CPU in a burst).
12. SQS: a queue's messages are filtered with one clock reading, not two per message, and a received
   message's retention is checked against the queue's setting, not by computing every queue attribute
   (three passes over all its messages) for each message received.
13. DynamoDB: an UpdateExpression is parsed, and a condition (or key, or filter) expression lexed, once per
    distinct text instead of twice per call (a fifth of an UpdateItem's CPU); names and values are still
    resolved on every call.
14. Step Functions: in moto's server, the interpreter's service integrations are served in-process by the
    server's own application (`serve_integrations_in_process`), not over HTTP to itself.
15. DynamoDB: a Query or Scan of a table no longer deep-copies every item it answers with: its handler
    serializes them under the lock (patch 1), before any write can change them.
16. DynamoDB: an UpdateItem's validator copies the (shared, patch 13) expression tree node by node instead of
    with `copy.deepcopy` (5% of the server's CPU in a burst), and runs the rules that read only the tree,
    its attribute names and the table's keys (clause counts, overlapping paths, key updates) once per
    distinct expression and names, not on every call; the rules that resolve values and the item still run
    on every call.
17. The server answers DynamoDB's and SQS's JSON APIs (known by their `X-Amz-Target`, always posted to `/`) by
    calling moto's handler for them directly (`DirectJsonApis`), not through the host's Flask app: Flask's
    request context, its debug mode's checks, its CORS hooks, URL matching and response conversion were ~9% of
    the server's CPU. The handler gets moto's own request type with the same arguments; every other request
    (S3, Step Functions, moto's own API ...) takes the Flask path as before.
"""

from __future__ import annotations

import base64
import copy
import functools
import inspect
import json
import os
import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

DYNAMODB_LOCK = threading.RLock()
LAMBDA_ENDPOINT_VARIABLE = "SPILLWAY_LAMBDA_ENDPOINT"
PROGRAM_CACHE_SIZE = 64
EXPRESSION_CACHE_SIZE = 1024  # distinct DynamoDB expressions kept parsed
INTEGRATION_CONNECTIONS = 64  # per service: pooled connections of the interpreter's integration clients

# Handler methods (one per API action) run under the lock, reads included; see the module docstring.
_LOCKED_HANDLER_ACTIONS = (
    "put_item", "update_item", "delete_item", "batch_write_item", "transact_write_items",
    "get_item", "batch_get_item", "query", "scan", "transact_get_items",
)
# The backend's batch_write_item is an empty stub: moto's handler does the batch, locked above.
_LOCKED_BACKEND_METHODS = ("put_item", "update_item", "delete_item")

_applied = False
_apply_lock = threading.Lock()
_tls = threading.local()  # .in_transaction: this thread is inside a patched transact_write_items


def apply() -> None:
    """Patch moto in this process (once; later calls do nothing)."""
    global _applied
    with _apply_lock:
        if _applied:
            return
        _patch_dynamodb()
        _patch_dynamodb_query()
        _patch_dynamodb_results()
        _patch_dynamodb_expressions()
        _patch_dynamodb_validation()
        _patch_dynamodb_result_copies()
        _patch_sqs()
        _patch_stepfunctions()
        _patch_integrations()
        _patch_dispatcher()
        _patch_s3_post_policy()
        _applied = True


# ---------------------------------------------------------------- DynamoDB


def _locked(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def locked(*args: Any, **kwargs: Any) -> Any:
        with DYNAMODB_LOCK:
            return method(*args, **kwargs)

    locked.__spillway_patched__ = True  # type: ignore[attr-defined]
    return locked


def _patch_dynamodb() -> None:
    import moto.dynamodb.models as models
    from moto.dynamodb.models import DynamoDBBackend
    from moto.dynamodb.responses import DynamoHandler

    for name in _LOCKED_HANDLER_ACTIONS:
        setattr(DynamoHandler, name, _locked(getattr(DynamoHandler, name)))
    for name in _LOCKED_BACKEND_METHODS:
        setattr(DynamoDBBackend, name, _locked(getattr(DynamoDBBackend, name)))
    DynamoDBBackend.transact_write_items = _item_level_transaction(DynamoDBBackend.transact_write_items)
    # moto's transact_write_items begins with `copy.deepcopy(self.tables[name])` for every table it
    # touches, and on failure puts those copies back in `self.tables`. Inside a patched transaction that
    # copy is the table itself, so its restore is a no-op; the items are snapshotted and restored by
    # _item_level_transaction instead. If a later moto stops copying tables that way, this just stops
    # applying and moto's own (slower, still serialized) behaviour remains.
    models.copy = _TableCopyShim(models.Table)  # type: ignore[attr-defined]


class _TableCopyShim:
    """Stands for the `copy` module inside moto.dynamodb.models."""

    def __init__(self, table_type: type) -> None:
        self._table_type = table_type

    def __getattr__(self, name: str) -> Any:
        return getattr(copy, name)

    def deepcopy(self, value: Any, memo: dict[int, Any] | None = None) -> Any:
        if getattr(_tls, "in_transaction", False) and isinstance(value, self._table_type):
            return value
        return copy.deepcopy(value, memo)


_ABSENT = object()


def _item_level_transaction(transact_write_items: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(transact_write_items)
    def transaction(self: Any, transact_items: list[dict[str, Any]]) -> None:
        with DYNAMODB_LOCK:
            snapshots, stream_lengths = _snapshot(self, transact_items)
            _tls.in_transaction = True
            try:
                return transact_write_items(self, transact_items)
            except BaseException:
                _restore(snapshots, stream_lengths)
                raise
            finally:
                _tls.in_transaction = False

    transaction.__spillway_patched__ = True  # type: ignore[attr-defined]
    return transaction


def _snapshot(backend: Any, transact_items: list[dict[str, Any]]) -> tuple[list[tuple[Any, ...]], dict[int, Any]]:
    """Deep copies (or _ABSENT) of the items a transaction may write, before it writes any.

    moto reads every operation's item with `get_item(table_name, key)` (the same key derivation as
    here) before writing it, so an operation whose key cannot be read here writes nothing.
    """
    snapshots: list[tuple[Any, ...]] = []
    seen: set[tuple[int, Any, Any]] = set()
    stream_lengths: dict[int, Any] = {}
    for entry in transact_items if isinstance(transact_items, list) else []:
        try:
            op_type, op = next(iter(entry.items()))
            if op_type not in ("Put", "Update", "Delete"):
                continue  # ConditionCheck writes nothing
            table = backend.get_table(op["TableName"])
            if op_type == "Put":
                attrs = op["Item"]
                key = {table.hash_key_attr: attrs[table.hash_key_attr]}
                if table.range_key_attr is not None:
                    key[table.range_key_attr] = attrs[table.range_key_attr]
            else:
                key = op["Key"]
            hash_value, range_value = backend.get_keys_value(table, key)
        except Exception:  # a missing table or key: moto answers this operation with an error, unwritten
            continue
        if (id(table), hash_value, range_value) in seen:
            continue  # moto refuses two operations on one item; the first snapshot is the original
        seen.add((id(table), hash_value, range_value))
        current = table.get_item(hash_value, range_value)
        snapshots.append((table, hash_value, range_value, _ABSENT if current is None else copy.deepcopy(current)))
        if table.stream_shard is not None and id(table) not in stream_lengths:
            stream_lengths[id(table)] = (table.stream_shard, table.stream_shard.items, len(table.stream_shard.items))
    return snapshots, stream_lengths


def _restore(snapshots: list[tuple[Any, ...]], stream_lengths: dict[int, Any]) -> None:
    """Put every snapshotted item back as it was. Indexes need nothing: moto computes a GSI or LSI
    query from `table.items` each time, it stores no index entries of its own."""
    for table, hash_value, range_value, item in reversed(snapshots):
        if range_value is not None:
            bucket = table.items[hash_value]
            if item is _ABSENT:
                bucket.pop(range_value, None)
                if not bucket:
                    del table.items[hash_value]
            else:
                bucket[range_value] = item
        elif item is _ABSENT:
            table.items.pop(hash_value, None)
        else:
            table.items[hash_value] = item
    # moto's table-level restore also dropped the stream records of the cancelled writes.
    for shard, records, length in stream_lengths.values():
        if shard.items is records:  # not handed to a Lambda event source mapping meanwhile
            del records[length:]


def _patch_dynamodb_query() -> None:
    from moto.dynamodb.models.table import Table

    query = Table.query
    parameters = inspect.signature(query)

    @functools.wraps(query)
    def table_query(self: Any, *args: Any, **kwargs: Any) -> Any:
        # moto's query begins with `self.all_items()`: every item of the table, sorted; then keeps those it
        # wants and sorts them again. It runs here on a view whose all_items() is only what it can keep.
        given = parameters.bind(self, *args, **kwargs).arguments
        return query(_QueryView(self, None if given.get("index_name") else given["hash_key"]), *args, **kwargs)

    table_query.__spillway_patched__ = True  # type: ignore[attr-defined]
    Table.query = table_query


class _QueryView:
    """A table as its `query` sees it: `all_items()` is the items under `hash_key` (a query of the table
    itself), or every item unsorted (a query of an index, which sorts what it picks); all else is the table."""

    def __init__(self, table: Any, hash_key: Any):
        self._table = table
        self._hash_key = hash_key

    def __getattr__(self, name: str) -> Any:
        return getattr(self._table, name)

    def all_items(self) -> list[Any]:
        table = self._table
        if self._hash_key is None:
            buckets = table.items.values()
            if table.range_key_attr:
                return [item for bucket in buckets for item in bucket.values()]
            return list(buckets)  # hash-only tables map a hash key to its item
        bucket = table.items.get(self._hash_key)
        if not bucket:
            return []
        if not table.range_key_attr:
            return [bucket]
        # In range key order already (by each key's value, as DynamoType compares): query's own sort, which
        # compares DynamoTypes, then only confirms it.
        return sorted(bucket.values(), key=lambda item: item.range_key.cast_value)


def _patch_dynamodb_expressions() -> None:
    from moto.dynamodb.comparisons import ConditionExpressionParser
    from moto.dynamodb.parsing.expressions import UpdateExpressionParser

    # An UpdateItem parsed its UpdateExpression twice (the handler, then the backend), token by token, and a
    # handful of distinct expressions make every update. The tree is shared: its readers only read it, and
    # moto's validator deep-copies it before it resolves names and values in it.
    make = functools.lru_cache(maxsize=EXPRESSION_CACHE_SIZE)(UpdateExpressionParser.make.__func__)
    UpdateExpressionParser.make = classmethod(make)

    # A ConditionExpression (or a query's key and filter expressions) is lexed by trying a dozen regular
    # expressions at every position, twice per UpdateItem. Its tokens depend on the text only (names and
    # values are resolved after), and are immutable tuples: lexed once, each parse gets a fresh deque of them.
    lex = ConditionExpressionParser._lex_condition_expression
    lexed = functools.lru_cache(maxsize=EXPRESSION_CACHE_SIZE)(
        lambda text: tuple(lex(ConditionExpressionParser(text, None, None))))

    @functools.wraps(lex)
    def _lex_condition_expression(self: Any) -> Any:
        return deque(lexed(self.condition_expression))

    for patched in (make, _lex_condition_expression):
        patched.__spillway_patched__ = True  # type: ignore[attr-defined]
    ConditionExpressionParser._lex_condition_expression = _lex_condition_expression


def _patch_dynamodb_validation() -> None:
    from moto.dynamodb.parsing import validators
    from moto.dynamodb.parsing.ast_nodes import Node

    # The rules that read only the tree, its names and the table's keys; moto runs them first, before any
    # rule resolves a name or a value in the tree.
    pure = (validators.ActionCountValidator, validators.OverlappingPathsValidator,
            validators.UpdateHashRangeKeyValidator)
    passed: OrderedDict[tuple[int, Any, Any], Any] = OrderedDict()  # -> its tree, held so its id stays its own

    def __init__(self: Any, expression: Any, expression_attribute_names: Any, expression_attribute_values: Any,
                 item: Any, table: Any) -> None:
        self.expression_attribute_names = expression_attribute_names
        self.expression_attribute_values = expression_attribute_values
        self.item = item
        self.table = table
        self.node_to_validate = _clone_tree(expression, Node)
        processors = self.get_ast_processors()
        key = (id(expression), frozenset((expression_attribute_names or {}).items()), tuple(table.table_key_attrs))
        if key not in passed:
            for rule in (p for p in processors if isinstance(p, pure)):
                self.node_to_validate = rule.traverse(self.node_to_validate)  # raises as moto's validate would
            passed[key] = expression
            if len(passed) > EXPRESSION_CACHE_SIZE:
                passed.popitem(last=False)
        self.processors = [p for p in processors if not isinstance(p, pure)]

    __init__.__spillway_patched__ = True  # type: ignore[attr-defined]
    validators.UpdateExpressionValidator.__init__ = __init__


def _clone_tree(node: Any, node_type: type) -> Any:
    """A copy of a parsed expression tree for moto's validator to rewrite: new nodes and child lists (the
    validator replaces children in place), their leaves shared (names, operators, indexes: immutable)."""
    copied = object.__new__(type(node))
    copied.__dict__.update(node.__dict__)
    if node.children is not None:
        copied.children = [_clone_tree(child, node_type) if isinstance(child, node_type) else
                           child if isinstance(child, str | int | float | bool | None) else copy.deepcopy(child)
                           for child in node.children]
        for child in copied.children:
            if isinstance(child, node_type):
                child.parent = copied
    return copied


def _patch_dynamodb_result_copies() -> None:
    import moto.dynamodb.models.table as table_module
    from moto.dynamodb.responses import DynamoHandler

    # Table.query and Table.scan deep-copy every item they return (a GPU's record with its health history is
    # hundreds of DynamoType objects), so that the answer cannot change under a later write. The handler turns
    # them into plain JSON (DynamoResult) before it returns, under DYNAMODB_LOCK: no write comes in between.
    # Items read through an index are still copied (moto projects them onto the index in place).
    for name in ("query", "scan"):
        handler = getattr(DynamoHandler, name)

        def answer(self: Any, _handler: Callable[..., Any] = handler) -> Any:
            with DYNAMODB_LOCK:
                _tls.answered_under_lock = not self.body.get("IndexName")
                try:
                    return _handler(self)
                finally:
                    _tls.answered_under_lock = False

        answer.__spillway_patched__ = True  # type: ignore[attr-defined]
        setattr(DynamoHandler, name, functools.wraps(handler)(answer))
    table_module.copy = _ResultCopyShim()  # type: ignore[attr-defined]


class _ResultCopyShim:
    """Stands for the `copy` module inside moto.dynamodb.models.table: no copies of a handler's results."""

    def __getattr__(self, name: str) -> Any:
        return getattr(copy, name)

    def deepcopy(self, value: Any, memo: dict[int, Any] | None = None) -> Any:
        return value if getattr(_tls, "answered_under_lock", False) else copy.deepcopy(value, memo)


# The operations answered with a DynamoResult of items and counts: their JSON is the result itself.
_ITEM_OPERATIONS = frozenset({
    "GetItem", "PutItem", "UpdateItem", "DeleteItem", "Query", "Scan", "BatchGetItem", "TransactGetItems",
})


def _patch_dynamodb_results() -> None:
    from moto.dynamodb.responses import DynamoResult

    serialize = DynamoResult.execute_result

    def plain(value: Any) -> Any:
        """What the JSON protocol sends: binary as base64, no null members."""
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items() if v is not None}
        if isinstance(value, list):
            return [plain(v) for v in value]
        if isinstance(value, bytes):
            return base64.b64encode(value).decode()
        return value

    @functools.wraps(serialize)
    def execute_result(self: Any, context: Any) -> Any:
        if context.operation_model.name not in _ITEM_OPERATIONS or not isinstance(self.result, dict):
            return serialize(self, context)
        members = context.operation_model.output_shape.members  # moto adds a few the API does not have
        answer = {k: v for k, v in self.result.items() if k in members}
        return 200, {"Content-Type": "application/x-amz-json-1.0"}, json.dumps(plain(answer))

    execute_result.__spillway_patched__ = True  # type: ignore[attr-defined]
    DynamoResult.execute_result = execute_result


# ---------------------------------------------------------------- SQS


def _patch_sqs() -> None:
    from moto.core.utils import unix_time, unix_time_millis
    from moto.sqs.models import Queue, SQSBackend

    # Message.visible and .delayed read the clock (a datetime subtraction) for every message, in every pass.
    def messages(self: Any) -> list[Any]:
        now = unix_time_millis()
        return [m for m in self._messages if now > m.visible_at and now >= m.delayed_until]

    def delayed(self: Any) -> int:
        now = unix_time_millis()
        return sum(1 for m in self._messages if now < m.delayed_until)

    def not_visible(self: Any) -> int:
        now = unix_time_millis()
        return sum(1 for m in self._messages if now <= m.visible_at)

    def retained(self: Any, queue_name: str, message: Any) -> bool:
        retention = int(self.get_queue(queue_name).message_retention_period)
        return retention + message.sent_timestamp / 1000 > unix_time()

    for name, value in (("messages", messages), ("approximate_number_of_messages_delayed", delayed),
                        ("approximate_number_of_messages_not_visible", not_visible)):
        value.__spillway_patched__ = True  # type: ignore[attr-defined]
        setattr(Queue, name, property(value))
    retained.__spillway_patched__ = True  # type: ignore[attr-defined]
    SQSBackend.is_message_valid_based_on_retention_period = retained


# ---------------------------------------------------------------- Step Functions


def _patch_stepfunctions() -> None:
    from moto.stepfunctions.parser.backend.execution_worker import ExecutionWorker
    from moto.stepfunctions.parser.models import StepFunctionsParserBackend

    def _get_evaluation_entrypoint(self: Any) -> Any:
        return parsed_program(self._evaluation_details.state_machine_details.definition)

    _get_evaluation_entrypoint.__spillway_patched__ = True  # type: ignore[attr-defined]
    ExecutionWorker._get_evaluation_entrypoint = _get_evaluation_entrypoint

    # CreateStateMachine parsed the definition to validate it (0.3-0.5 s CPU for the dispatch machine), and the
    # tests create the same one hundreds of times: it goes through the cache too, so the first execution finds
    # it parsed. A definition that does not parse is handed to moto's own check for its InvalidDefinition.
    validate_definition = StepFunctionsParserBackend._validate_definition

    def _validate_definition(definition: str) -> None:
        try:
            parsed_program(definition)
        except Exception:
            validate_definition(definition)
            raise

    _validate_definition.__spillway_patched__ = True  # type: ignore[attr-defined]
    StepFunctionsParserBackend._validate_definition = staticmethod(_validate_definition)

    # SendTaskSuccess/Failure/Heartbeat (and the map-run calls) look for the token in every execution's
    # `exec_worker.env`, which is None until the execution's thread has its program and environment: one
    # execution just starting made every callback fail with AttributeError (a 500). Such an execution
    # cannot hold a token yet, so it is skipped.
    get_executions = StepFunctionsParserBackend._get_executions

    @functools.wraps(get_executions)
    def _get_executions(self: Any, *args: Any, **kwargs: Any) -> list[Any]:
        return [execution for execution in get_executions(self, *args, **kwargs)
                if execution.exec_worker is not None and execution.exec_worker.env is not None]

    _get_executions.__spillway_patched__ = True  # type: ignore[attr-defined]
    StepFunctionsParserBackend._get_executions = _get_executions

    # SendTaskFailure's `cause` was dropped by moto's response handler: a Catch saw `"Cause": null`, so a
    # job lost the reason its attempt failed.
    from moto.core.responses import ActionResult, EmptyResult
    from moto.stepfunctions.responses import StepFunctionResponse

    def send_task_failure(self: Any) -> Any:
        backend = self.stepfunction_backend  # the interpreter's backend takes a cause; the plain one does not
        cause = {"cause": self._get_param("cause")} \
            if "cause" in inspect.signature(backend.send_task_failure).parameters else {}
        backend.send_task_failure(self._get_param("taskToken"), error=self._get_param("error"), **cause)
        return EmptyResult()

    send_task_failure.__spillway_patched__ = True  # type: ignore[attr-defined]
    StepFunctionResponse.send_task_failure = send_task_failure

    # StopExecution left an execution that waits on a task token RUNNING until that task's timeout (its thread
    # blocks in the callback wait, which nothing interrupted), and dropped the stop's error and cause. On AWS
    # the execution is ABORTED at once, with them: a cancelled job's execution must not wait out its deadline.
    from moto.stepfunctions.parser.backend.execution import Execution

    def stop_execution(self: Any) -> Any:
        execution = self.stepfunction_backend.stop_execution(self._get_param("executionArn"))
        error, cause = self._get_param("error"), self._get_param("cause")
        if isinstance(execution, Execution):
            execution.error = error if error is not None else execution.error
            execution.cause = cause if cause is not None else execution.cause
            worker = execution.exec_worker
            if worker is not None and worker.env is not None:  # wake every wait of this execution's tokens
                for endpoint in list(worker.env.callback_pool_manager._pool.values()):
                    endpoint.interrupt_all()
        return ActionResult({"stopDate": execution.stop_date})

    stop_execution.__spillway_patched__ = True  # type: ignore[attr-defined]
    StepFunctionResponse.stop_execution = stop_execution

    # ... and the interrupted wait then raises (a States.Timeout) into an environment that overwrote its stop
    # with that error: once stopped, an execution stays stopped.
    from moto.stepfunctions.parser.asl.eval.environment import Environment
    from moto.stepfunctions.parser.asl.eval.program_state import ProgramStopped

    for name in ("set_error", "set_timed_out"):
        _keep_stopped(Environment, name, ProgramStopped)


def _keep_stopped(environment: type, name: str, stopped: type) -> None:
    original = getattr(environment, name)

    @functools.wraps(original)
    def unless_stopped(self: Any, *args: Any, **kwargs: Any) -> None:
        if not isinstance(self._program_state, stopped):
            original(self, *args, **kwargs)

    unless_stopped.__spillway_patched__ = True  # type: ignore[attr-defined]
    setattr(environment, name, unless_stopped)


_programs: OrderedDict[str, Any] = OrderedDict()  # definition -> program, least recently used first
_programs_lock = threading.Lock()
_parse_lock = threading.Lock()


def parsed_program(definition: str) -> Any:
    """The evaluation program of a state machine definition, parsed once per distinct definition.

    A bounded LRU like functools.lru_cache, but single-flight: a burst of executions of a definition not
    parsed yet waits for one parse instead of each parsing it (lru_cache lets concurrent misses all run)."""
    from moto.stepfunctions.parser.asl.parse.asl_parser import AmazonStateLanguageParser

    with _programs_lock:
        if (program := _programs.get(definition)) is not None:
            _programs.move_to_end(definition)
            return program
    with _parse_lock:
        with _programs_lock:
            if (program := _programs.get(definition)) is not None:
                return program
        program = AmazonStateLanguageParser.parse(definition)[0]  # raises as moto would: nothing cached
        _draw_heap_keys(program)
        with _programs_lock:
            _programs[definition] = program
            while len(_programs) > PROGRAM_CACHE_SIZE:
                _programs.popitem(last=False)
    return program


def _draw_heap_keys(program: Any) -> None:
    """Draw every component's `heap_key` now, before the program is shared.

    The key names a component's per-execution values (a Retry's attempt count, its backoff) in the
    execution's heap; moto draws it lazily, so two executions reaching a Retrier at once could draw two
    keys and one would lose its attempt count."""
    from moto.stepfunctions.parser.asl.component.eval_component import EvalComponent

    seen: set[int] = set()
    pending: list[Any] = [program]
    while pending:
        value = pending.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        if isinstance(value, EvalComponent):
            _ = value.heap_key
        if isinstance(value, list | tuple | set | frozenset):
            pending.extend(value)
        elif isinstance(value, dict):
            pending.extend(value.values())
        elif type(value).__module__.startswith("moto.stepfunctions.parser.asl.") and hasattr(value, "__dict__"):
            pending.extend(vars(value).values())  # components, and holders such as States (not a Component)


# ---------------------------------------------------------------- Step Functions integrations


def _patch_integrations() -> None:
    import importlib
    import pkgutil

    import moto.stepfunctions.parser.asl.component.state.exec.state_task.service as services
    from jsonpath_ng.ext import parse as parse_json_path
    from moto.stepfunctions.parser.asl.utils import boto_client, json_path

    json_path.parse = functools.lru_cache(maxsize=4096)(parse_json_path)

    build_client = boto_client.boto_client_for
    clients_lock = threading.Lock()

    @functools.lru_cache(maxsize=64)
    def _client(region: str, service: str, port: str, stubbed: bool, lambda_endpoint: str | None,
                server_app: Any) -> Any:
        import boto3
        from botocore.config import Config
        from moto.stepfunctions.parser.asl.component.common.timeouts.timeout import TimeoutSeconds

        if service == "lambda" and lambda_endpoint:
            # moto runs no Lambda code without Docker: `lambda:invoke` Tasks reach the embedded runtime,
            # which serves Lambda's Invoke API with the real handlers.
            endpoint, timeout = lambda_endpoint, 900
        elif stubbed:
            return build_client(region, service)  # in-process moto: calls never leave the process
        else:
            endpoint, timeout = f"http://127.0.0.1:{port}", TimeoutSeconds.DEFAULT_TIMEOUT_SECONDS
        # moto's own client settings, with a connection pool for as many executions as call at once: with
        # botocore's 10, a burst dropped a connection after nearly every call and opened a new one.
        client = boto3.client(service, endpoint_url=endpoint, region_name=region,
                              aws_access_key_id="testing", aws_secret_access_key="testing",
                              config=Config(parameter_validation=False, retries={"total_max_attempts": 1},
                                            connect_timeout=60, read_timeout=timeout,
                                            max_pool_connections=INTEGRATION_CONNECTIONS))
        if server_app is not None and endpoint != lambda_endpoint:
            client.meta.events.register("before-send", functools.partial(_send_in_process, server_app))
        return client

    def boto_client_for(region: str, service: str, state_credentials: Any = None) -> Any:
        from moto.core.models import botocore_stubber
        from moto.settings import moto_server_port

        # moto's own function ignores state_credentials (every client signs as the same fake user).
        # Under a lock: a burst's executions reach their first integration at once, and each would build
        # its own client (tens of ms of CPU each) before the first was cached.
        with clients_lock:
            return _client(region, service, str(moto_server_port()), botocore_stubber.enabled,
                           os.environ.get(LAMBDA_ENDPOINT_VARIABLE), _server_app)

    boto_client_for.__spillway_patched__ = True  # type: ignore[attr-defined]
    boto_client.boto_client_for = boto_client_for
    # Each integration module imported the function by name: patch the name where it stands (the Lambda
    # integration's helpers live one package up).
    from moto.stepfunctions.parser.asl.component.state.exec.state_task import lambda_eval_utils

    modules = [importlib.import_module(m.name)
               for m in pkgutil.iter_modules(services.__path__, services.__name__ + ".")] + [lambda_eval_utils]
    for module in modules:
        if getattr(module, "boto_client_for", None) is build_client:
            module.boto_client_for = boto_client_for


_server_app: Any = None  # the server's WSGI application, once it serves the interpreter's integrations


def serve_integrations_in_process(server_app: Any) -> None:
    """The Step Functions interpreter's integration calls (DynamoDB, SQS ...) are handed to `server_app`, the
    server's own WSGI application (its counters included), in the calling thread: before, each one went out
    over HTTP to this same process (botocore's HTTP client, a socket, werkzeug's request parsing, a server
    thread) and back. `lambda:invoke` still goes to the embedded runtime, another process."""
    global _server_app
    _server_app = server_app


def _send_in_process(server_app: Any, request: Any, **_: Any) -> Any:
    """A botocore `before-send` handler: the request answered by `server_app`, as if it had crossed HTTP."""
    from urllib.parse import urlsplit

    from botocore.awsrequest import AWSResponse
    from moto.core.botocore_stubber import MockRawResponse
    from werkzeug.test import EnvironBuilder

    url = urlsplit(request.url)
    body = request.body or b""
    if not isinstance(body, bytes | str):
        body = body.read()  # a file-like body (botocore streams large payloads)
    headers = [(k, v.decode() if isinstance(v, bytes) else v) for k, v in request.headers.items()]  # some are bytes
    environ = EnvironBuilder(method=request.method, base_url=f"{url.scheme}://{url.netloc}", path=url.path,
                             query_string=url.query, headers=headers, data=body).get_environ()
    started: list[Any] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        started[:] = [int(status.split(" ", 1)[0]), dict(headers)]
        return lambda data: None  # moto's apps answer with a body, never through write()

    answer = server_app(environ, start_response)
    try:
        data = b"".join(answer)
    finally:
        if hasattr(answer, "close"):
            answer.close()
    return AWSResponse(request.url, started[0], started[1], MockRawResponse(data))


class DirectJsonApis:
    """WSGI: DynamoDB's and SQS's JSON calls answered by moto's handler directly (patch 17); the rest by `app`."""

    def __init__(self, app: Any):
        from moto.core.request import Request
        from moto.dynamodb.responses import DynamoHandler
        from moto.sqs.responses import SQSResponse

        class ServerRequest(Request):
            from_wsgi_server = True  # as moto's server's own request class says (its body read as such)

        self._app = app
        self._request = ServerRequest
        # X-Amz-Target prefix -> moto's dispatch for the API, as its URL map names it for the root path.
        self._handlers = (("DynamoDB_20120810.", DynamoHandler.dispatch), ("AmazonSQS.", SQSResponse.dispatch))

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        if target and environ.get("PATH_INFO") == "/" and environ.get("REQUEST_METHOD") == "POST":
            for prefix, dispatch in self._handlers:
                if target.startswith(prefix):
                    return self._answer(dispatch, environ, start_response)
        return self._app(environ, start_response)

    def _answer(self, dispatch: Callable[..., Any], environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        from botocore.exceptions import ClientError
        from werkzeug.exceptions import HTTPException
        from werkzeug.http import HTTP_STATUS_CODES

        request = self._request(environ)
        try:
            result = dispatch(request, request.raw_url, dict(request.headers))
        except ClientError as exc:  # as moto's Flask view answers it
            result = 400, {}, exc.response["Error"]["Message"]
        except HTTPException as exc:  # moto's errors are werkzeug's: Flask answered them with their own response
            answer = exc.get_response(environ)
            result = answer.status_code, dict(answer.headers), answer.get_data()
        status, headers, body = result if len(result) == 3 else (200, {}, result)
        data = body.encode() if isinstance(body, str) else bytes(body or b"")
        listed = [(str(name), str(value)) for name, value in (headers or {}).items()
                  if name.lower() != "content-length"]
        if not any(name.lower() == "content-type" for name, _ in listed):
            listed.append(("Content-Type", "text/html; charset=utf-8"))  # what Flask's Response would say
        listed.append(("Content-Length", str(len(data))))
        start_response(f"{int(status)} {HTTP_STATUS_CODES.get(int(status), 'UNKNOWN')}", listed)
        return [data]


def _patch_dispatcher() -> None:
    import moto.core.responses as responses
    from moto.core.utils import method_names_from_class
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication

    # Every call looked its action up among `inspect.getmembers(...)` of its handler class (10% of a GetItem).
    responses.method_names_from_class = functools.lru_cache(maxsize=256)(method_names_from_class)

    find_backend = DomainDispatcherApplication.get_backend_for_host
    found: dict[tuple[int, str | None], Any] = {}

    @functools.wraps(find_backend)
    def get_backend_for_host(self: Any, host: str | None) -> Any:
        key = (id(self), host)
        if key not in found:
            found[key] = find_backend(self, host)
        return found[key]

    get_backend_for_host.__spillway_patched__ = True  # type: ignore[attr-defined]
    DomainDispatcherApplication.get_backend_for_host = get_backend_for_host


# ---------------------------------------------------------------- S3


def _patch_s3_post_policy() -> None:
    from moto.s3.responses import S3Response

    post = S3Response._bucket_response_post

    @functools.wraps(post)
    def bucket_response_post(self: Any, request: Any, bucket_name: str) -> Any:
        policy = self.querystring.get("policy") or self.querystring.get("Policy")
        refused = _post_policy_refusal(policy[0], len(self.body or b"")) if policy else None
        return refused or post(self, request, bucket_name)

    S3Response._bucket_response_post = bucket_response_post


def _post_policy_refusal(encoded: str, size: int) -> tuple[int, dict[str, str], str] | None:
    """S3's answer to a form upload its policy forbids (expired, or a file outside its length range)."""
    policy = json.loads(base64.b64decode(encoded))
    if datetime.fromisoformat(policy["expiration"]) < datetime.now(UTC):
        return _s3_error(403, "AccessDenied", "Invalid according to Policy: Policy expired.")
    for condition in policy.get("conditions", []):
        if isinstance(condition, list) and condition[0] == "content-length-range":
            low, high = int(condition[1]), int(condition[2])
            if size > high:
                return _s3_error(400, "EntityTooLarge", "Your proposed upload exceeds the maximum allowed size")
            if size < low:
                return _s3_error(400, "EntityTooSmall", "Your proposed upload is smaller than the minimum allowed size")
    return None


def _s3_error(status: int, code: str, message: str) -> tuple[int, dict[str, str], str]:
    return status, {"Content-Type": "application/xml"}, \
        f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code><Message>{message}</Message></Error>"
