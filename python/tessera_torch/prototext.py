"""A reader for the part of protobuf text format tessera's files use.

tessera writes job specs (the ``job_spec`` attribute, ``job.pbtxt``) and store files
(``model.pbtxt``, aliases) as protobuf text. This reads that syntax -- ``name: value``,
``name { ... }`` (also ``name: { ... }``), ``#`` comments, quoted strings with C escapes,
numbers, enum names and booleans -- into nested dicts that map each field name to the list of
its values, in order. It knows nothing of the schema: spec.py gives the fields their meaning.
"""
import codecs
import re

_TOKEN = re.compile(r"""
    \s+ | \#[^\n]* |                                   # skipped
    (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*') |
    (?P<word>[-+]?[A-Za-z0-9_.+-]+) |
    (?P<punct>[{}:;,<>\[\]])
""", re.VERBOSE)


class ProtoTextError(ValueError):
    pass


def _tokens(text, where):
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            line = text.count("\n", 0, pos) + 1
            raise ProtoTextError(f"{where}:{line}: cannot read {text[pos:pos + 20]!r}")
        pos = m.end()
        if m.lastgroup:
            yield m.lastgroup, m.group(m.lastgroup)


def _unquote(token):
    raw = codecs.escape_decode(token[1:-1].encode("utf-8"))[0]  # C escapes, octal bytes included
    return raw.decode("utf-8", errors="replace")


def _scalar(kind, token):
    if kind == "string":
        return _unquote(token)
    for convert in (int, float):
        try:
            return convert(token)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(token, token)  # an enum name, or inf / nan


def parse(text, where="protobuf text"):
    """The message in `text` as {field: [value, ...]}; a nested message is such a dict."""
    stack = [{}]
    tokens = list(_tokens(text, where))
    i = 0
    while i < len(tokens):
        kind, tok = tokens[i]
        if tok == "}":
            if len(stack) == 1:
                raise ProtoTextError(f"{where}: '}}' without an open message")
            stack.pop()
            i += 1
            continue
        if kind != "word" or i + 1 >= len(tokens):
            raise ProtoTextError(f"{where}: expected a field name, found {tok!r}")
        name, (kind2, tok2) = tok, tokens[i + 1]
        i += 2
        if tok2 == ":":
            if i >= len(tokens):
                raise ProtoTextError(f"{where}: field {name} has no value")
            kind2, tok2 = tokens[i]
            i += 1
        if tok2 == "{":
            child = {}
            stack[-1].setdefault(name, []).append(child)
            stack.append(child)
        elif kind2 in ("string", "word"):
            value = _scalar(kind2, tok2)
            while kind2 == "string" and i < len(tokens) and tokens[i][0] == "string":
                value += _unquote(tokens[i][1])  # adjacent strings concatenate
                i += 1
            stack[-1].setdefault(name, []).append(value)
        else:
            raise ProtoTextError(f"{where}: field {name}: unexpected {tok2!r}")
        if i < len(tokens) and tokens[i][1] in (";", ","):
            i += 1
    if len(stack) != 1:
        raise ProtoTextError(f"{where}: a message is not closed ('}}' missing)")
    return stack[0]
