"""YAML from users, read with libyaml and within limits.

``trailingstop run`` reads manifests a user wrote (or downloaded). Three things can go wrong that
the API server and kubectl guard against, and so does this module:

* **Aliases.** A few hundred bytes of anchors (``&a [*b, *b, ...]``) stand for gigabytes once
  expanded ("billion laughs"). libyaml keeps an alias as a reference to the anchored node, so the
  node graph stays small; its *expanded* size is counted on the graph (each node once) and a
  document that aliases would grow by more than :data:`MAX_ALIAS_EXPANSION` is refused before
  anything walks the expansion. An anchor that contains its own alias is refused too.
* **Duplicate keys.** PyYAML keeps the last value of a key set twice; kubectl refuses the file
  ("key already set in map"). So does this module, naming the key and both lines.
* **Speed.** libyaml parses (``CSafeLoader``). A file with no anchor, tag or merge key (the usual
  manifest) is built straight from libyaml's events; otherwise libyaml composes the node graph,
  which is checked and built here in one pass. Either way PyYAML's general constructor is left
  out (it builds objects for sets, timestamps and the like only): 10,000 TrailingStops load with
  every check and the CRD's validation in less CPU than ``yaml.load_all`` with ``CSafeLoader``
  alone (docs/BENCHMARKS.md).

Scalars keep YAML 1.1's meaning, as PyYAML's ``safe_load`` gives it (and kubectl, whose YAML
library is YAML 1.1 too); tags other than maps, sequences and strings (sets, ordered maps, merge
keys ``<<``, timestamps, binary) are built by PyYAML's own safe constructor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import yaml
from yaml.events import (
    AliasEvent,
    DocumentStartEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
)
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from trailingstop.core.echo import cut

MAX_DOCUMENTS = 100_000
# What aliases may add to one document, in nodes plus scalar characters, beyond what is written.
MAX_ALIAS_EXPANSION = 1_000_000

_STR = "tag:yaml.org,2002:str"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_MERGE = "tag:yaml.org,2002:merge"
_PLAIN = (True, False)  # libyaml's "implicit" for a plain scalar


class YamlProblem(ValueError):
    """Why the YAML is refused; ``line`` (1-based) and ``document`` (1-based) when known."""

    def __init__(self, problem: str, line: int | None = None, document: int | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.line = line
        self.document = document


def load_documents(text: str) -> Iterator[Any]:
    """The object of each YAML document of ``text``, checked as described above.

    Raises :class:`YamlProblem` (one line, no file name) for anything refused.
    """
    loader = _Loader(text)
    position = _Position()
    # The usual manifest has no anchor (&), tag (!) or merge key (<<): its documents are built
    # straight from libyaml's events, a third faster than composing nodes first. With an anchor,
    # the node graph is checked for alias expansion before anything is built.
    plain = not any(mark in text for mark in ("&", "!", "<<"))
    try:
        yield from (_from_events(loader, position) if plain else _from_nodes(loader, position, "&" in text))
    except YamlProblem as problem:
        problem.document = problem.document or position.document or None
        raise
    except yaml.MarkedYAMLError as exc:
        raise _marked_problem(exc, max(position.document, 1)) from None
    except yaml.reader.ReaderError as exc:
        line = text.encode("utf-8", "surrogatepass")[: exc.position].count(b"\n") + 1
        raise YamlProblem(f"not valid YAML: {exc.reason}", line, max(position.document, 1)) from None
    except yaml.YAMLError as exc:
        raise YamlProblem(f"not valid YAML: {cut(str(exc).splitlines()[0])}", None, max(position.document, 1)) from None
    finally:
        loader.dispose()


class _Position:
    """The number of the document being read (1-based; 0 before the first)."""

    def __init__(self) -> None:
        self.document = 0

    def next_document(self) -> None:
        self.document += 1

    def check(self, line: int) -> None:
        if self.document > MAX_DOCUMENTS:
            raise YamlProblem(f"more than {MAX_DOCUMENTS:,} documents, the limit for one file", line)


def _from_nodes(loader: _Loader, position: _Position, anchors: bool) -> Iterator[Any]:
    """Documents composed into node graphs by libyaml, each checked, then built (_Builder)."""
    while loader.check_node():
        position.next_document()  # before composing: an error in it belongs to this document
        node = loader.get_node()
        if node is None:
            break
        position.check(node.start_mark.line + 1)
        try:
            yield _Builder(loader, node).build(anchors)
        finally:
            loader.constructed_objects = {}
            loader.recursive_objects = {}


_EXPECT_KEY = object()  # a mapping's frame before its next key


def _from_events(loader: _Loader, position: _Position) -> Iterator[Any]:
    """Documents built straight from libyaml's events, for text with no anchor, tag or merge key.

    A frame per open collection: ``[container, pending key, first line of each key]`` for a
    mapping (pending is _EXPECT_KEY between entries), ``[list, None, None]`` for a sequence.
    """
    stack: list[list[Any]] = []
    while True:
        event: Any = loader.get_event()  # the stubs type events loosely; libyaml's always carry marks
        kind = type(event)
        if kind is ScalarEvent:
            value = _scalar(loader, event, stack)
        elif kind is MappingStartEvent:
            stack.append([{}, _EXPECT_KEY, {}])
            continue
        elif kind is SequenceStartEvent:
            stack.append([[], None, None])
            continue
        elif kind is MappingEndEvent or kind is SequenceEndEvent:
            value = stack.pop()[0]
        elif kind is DocumentStartEvent:
            position.next_document()
            position.check(event.start_mark.line + 1)
            continue
        elif kind is AliasEvent:  # no anchor anywhere: libyaml's composer would say the same
            raise YamlProblem(f"not valid YAML: found undefined alias {cut(event.anchor)}",
                              event.start_mark.line + 1)
        elif kind is StreamEndEvent:
            return
        else:
            continue  # the stream's start, a document's end
        if not stack:
            loader.constructed_objects = {}
            yield value
        else:
            _add(stack, value, event.start_mark.line + 1)


def _add(stack: list[list[Any]], value: Any, line: int) -> None:
    """Put ``value`` into the innermost open collection: a sequence item, a mapping's key or value."""
    frame = stack[-1]
    container, pending, key_lines = frame
    if key_lines is None:
        container.append(value)
    elif pending is not _EXPECT_KEY:
        container[pending] = value
        frame[1] = _EXPECT_KEY
    else:
        try:
            first = key_lines.get(value)
        except TypeError:
            raise YamlProblem(f"{_path(stack[:-1]) or 'the document'}: a key must be a string or a number, "
                              f"not a {type(value).__name__}", line) from None
        if first is not None:
            field = _path([*stack[:-1], [container, value, key_lines]])
            raise YamlProblem(f"{field}: key already set in this map (on line {first}); "
                              "kubectl refuses duplicate keys", line)
        key_lines[value] = line
        frame[1] = value


def _path(frames: list[list[Any]]) -> str:
    """``spec.quantity``, ``items[2].spec``: where the frames are, for an error message."""
    parts: list[str] = []
    for container, pending, key_lines in frames:
        if key_lines is None:
            parts.append(f"[{len(container)}]")
        elif pending is not _EXPECT_KEY:
            parts.append(("." if parts else "") + cut(str(pending), 40))
    return "".join(parts)


def _scalar(loader: _Loader, event: Any, stack: list[list[Any]]) -> Any:
    if not event.implicit[0]:
        return event.value  # quoted, or a literal block: a string
    tag = loader.plain_tags.get(event.value) or loader.plain_tag(event.value)
    if tag == _STR:
        return event.value
    node = ScalarNode(tag, event.value, event.start_mark, event.end_mark)
    try:
        return loader.construct_object(node, deep=True)
    except ValueError as exc:  # an integer of more than Python's 4,300 digits, a date like 2024-13-45
        where = _path(stack)
        raise YamlProblem(f"{where or 'the document'}: cannot be read: {cut(str(exc))}",
                          event.start_mark.line + 1) from None


def _marked_problem(exc: yaml.MarkedYAMLError, document: int) -> YamlProblem:
    """libyaml's several lines ("while parsing ..., in <string>, line 3 ...") as one."""
    mark = exc.problem_mark or exc.context_mark
    problem = exc.problem or exc.context or "not valid YAML"
    if exc.context and exc.problem:
        problem = f"{exc.problem} ({exc.context})"
    if mark is None:
        return YamlProblem(f"not valid YAML: {cut(problem, 200)}", None, document)
    return YamlProblem(f"not valid YAML: {cut(problem, 200)}, column {mark.column + 1}", mark.line + 1, document)


class _Loader(yaml.CSafeLoader):
    """CSafeLoader with the tag of each distinct plain scalar resolved once per file: libyaml calls
    ``resolve`` (Python regular expressions) for every scalar, and manifests repeat theirs."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._tags: dict[tuple[str, bool], str] = {}
        self.plain_tags: dict[str, str] = {}

    def resolve(self, kind: type[Node], value: Any, implicit: Any) -> Any:
        if kind is not ScalarNode:
            return super().resolve(kind, value, implicit)
        key = (value, implicit[0])
        tag = self._tags.get(key)
        if tag is None:
            tag = self._tags[key] = super().resolve(kind, value, implicit)
        return tag

    def plain_tag(self, value: str) -> str:
        """The tag YAML 1.1 gives a plain (unquoted) scalar: str, int, float, bool, null, ...
        (remembered in ``plain_tags``, which callers read first)."""
        tag = self.plain_tags[value] = str(super().resolve(ScalarNode, value, _PLAIN))
        return tag


class _Builder:
    """One document's node graph -> Python objects, checked in the same depth-first pass.

    Each node is visited once (an alias is the anchored node again, found in ``done``), without
    recursion. ``done[id(node)]`` is ``(object, expanded size)``: the size the node would have
    with every alias written out (1 per node plus the characters of a scalar).
    """

    def __init__(self, loader: _Loader, root: Node) -> None:
        self.loader = loader
        self.root = root
        self.done: dict[int, tuple[Any, int]] = {}
        self.written = 0

    def build(self, anchors: bool = True) -> Any:
        if not anchors:
            try:
                return self._plain(self.root)
            except RecursionError:
                pass  # nested deeper than Python's recursion limit (libyaml allows 1,000 levels)
        return self._checked()

    def _plain(self, node: Node) -> Any:
        """A document without aliases: each node once, no memo needed; duplicate keys still refused."""
        if type(node) is ScalarNode:
            return node.value if node.tag == _STR else self._construct(node)
        if type(node) is MappingNode:
            if node.tag != _MAP:
                return self._constructed_mapping(node)
            mapping: dict[Any, Any] = {}
            plain = self._plain
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE:
                    return self._constructed_mapping(node)
                key = plain(key_node)
                try:
                    mapping[key] = plain(value_node)
                except TypeError:
                    raise self._key_problem(node, key_node, key) from None
            if len(mapping) != len(node.value):
                self._check_keys(node, self._plain)  # raises, naming the key and both lines
            return mapping
        if node.tag != _SEQ:
            return self._construct(node)
        return [self._plain(item) for item in node.value]

    def _checked(self) -> Any:
        done = self.done
        open_nodes: set[int] = set()  # ancestors of the node at hand: an alias to one is a cycle
        stack: list[tuple[Node, bool]] = [(self.root, False)]
        while stack:
            node, finished = stack.pop()
            key = id(node)
            if finished:
                open_nodes.discard(key)
                done[key] = self._assemble(node)
            elif key in done:
                continue
            elif key in open_nodes:
                raise YamlProblem(f"{self._field(node) or 'the document'}: an alias contains itself",
                                  node.start_mark.line + 1)
            elif type(node) is ScalarNode:
                self._scalar(node)
            else:
                self.written += 1
                open_nodes.add(key)
                stack.append((node, True))
                for child in _children(node):
                    # Scalars (most nodes) are done at once; containers wait their turn on the stack.
                    if type(child) is ScalarNode:
                        if id(child) not in done:
                            self._scalar(child)
                    else:
                        stack.append((child, False))
        value, size = done[id(self.root)]
        if size - self.written > MAX_ALIAS_EXPANSION:
            raise YamlProblem(f"aliases expand this document by more than {MAX_ALIAS_EXPANSION:,} nodes and "
                              "characters; write it out, or use fewer aliases", self.root.start_mark.line + 1)
        return value

    def _scalar(self, node: ScalarNode) -> None:
        size = 1 + len(node.value)
        self.written += size
        if node.tag == _STR:
            value = node.value
        elif node.tag == _MERGE:
            value = None  # "<<" is no value: PyYAML merges the mapping that holds it
        else:
            value = self._construct(node)
        self.done[id(node)] = (value, size)

    def _assemble(self, node: Node) -> tuple[Any, int]:
        done = self.done
        if type(node) is MappingNode:
            size = 1 + sum(done[id(k)][1] + done[id(v)][1] for k, v in node.value)
            if node.tag != _MAP:
                return self._constructed_mapping(node), size
            mapping: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE:
                    return self._constructed_mapping(node), size
                key = done[id(key_node)][0]
                try:
                    mapping[key] = done[id(value_node)][0]
                except TypeError:
                    raise self._key_problem(node, key_node, key) from None
            if len(mapping) != len(node.value):
                self._check_keys(node, lambda key_node: done[id(key_node)][0])
            return mapping, size
        size = 1 + sum(done[id(item)][1] for item in node.value)
        if node.tag != _SEQ:
            return self._construct(node), size
        return [done[id(item)][0] for item in node.value], size

    def _constructed_mapping(self, node: MappingNode) -> Any:
        """A map with merge keys ``<<``, or another tag (``!!set``, ``!!omap``): PyYAML builds it."""
        self._check_keys(node, lambda key_node: self.loader.construct_object(key_node, deep=True))
        return self._construct(node)

    def _key_problem(self, node: MappingNode, key_node: Node, key: Any) -> YamlProblem:
        return YamlProblem(f"{self._field(node) or 'the document'}: a key must be a string or a number, "
                           f"not a {type(key).__name__}",
                           key_node.start_mark.line + 1)

    def _construct(self, node: Node) -> Any:
        """PyYAML's safe constructor, for everything but strings, plain maps and sequences."""
        try:
            return self.loader.construct_object(node, deep=True)
        except ValueError as exc:
            # An integer of more than Python's 4,300 digits, a date like 2024-13-45, ...
            raise YamlProblem(f"{self._field(node) or 'the document'}: cannot be read: {cut(str(exc))}",
                              node.start_mark.line + 1) from None

    def _check_keys(self, node: MappingNode, key_of: Callable[[Node], Any]) -> None:
        """A key set twice in one mapping is refused, as kubectl refuses it; the merge key ``<<``
        is not a key of the object and may repeat."""
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE or not isinstance(key_node, ScalarNode):
                continue
            key = key_of(key_node)
            line = key_node.start_mark.line + 1
            if key in first_line:
                field = self._field(node)
                name = f"{field}.{cut(str(key), 40)}" if field else cut(str(key), 40)
                raise YamlProblem(f"{name}: key already set in this map (on line {first_line[key]}); "
                                  "kubectl refuses duplicate keys", line)
            first_line[key] = line

    def _field(self, target: Node) -> str:
        """The path of ``target`` from the root (``spec.quantity``, ``items[2]``; "" for the root),
        looked for only when there is an error to report."""
        stack: list[tuple[Node, str]] = [(self.root, "")]
        seen: set[int] = set()
        while stack:
            node, path = stack.pop()
            if node is target:
                return path
            if id(node) in seen:
                continue
            seen.add(id(node))
            if isinstance(node, MappingNode):
                for key_node, value in node.value:
                    name = cut(key_node.value, 40) if isinstance(key_node, ScalarNode) else "?"
                    stack.append((value, f"{path}.{name}" if path else name))
            elif isinstance(node, SequenceNode):
                stack.extend((item, f"{path}[{index}]") for index, item in enumerate(node.value))
        return ""


def _children(node: Node) -> Iterator[Node]:
    if isinstance(node, MappingNode):
        for key_node, value in node.value:
            yield key_node
            yield value
    else:
        yield from node.value
