"""labels.txt as jetson-inference reads it: one class name per line, LF, no blank lines.

imageNet treats a line that starts like a synset id (``n01440764 tench``) as
"synset description" and shows only the description, so class names of that
shape are refused: the overlay would not show what the user named the class.
Its reader (``imageNet::LoadClassInfo`` in jetson-inference's c/imageNet.cpp,
``tensorNet::LoadClassLabels`` in later builds) does exactly this per line read
with ``fgets(str, 512, f)``: ``len > 9 && str[0] == 'n' && str[9] == ' '`` (len
counting the newline) makes it a synset line, keeping only what follows the
space, so 'nocturnal wheeze' would show as 'wheeze'; a line of 511 bytes or
more is split into two classes.
"""
import os
import re

from .errors import ConfigError

_SYNSET = re.compile(r"^n\d{8}")


def check_class_names(names, where="labels"):
    """Raise ConfigError unless ``names`` are usable jetson-inference class names."""
    if len(names) < 2:
        raise ConfigError("%s: need at least two classes, got %d" % (where, len(names)))
    for name in names:
        if not name or name != name.strip() or "\n" in name or "\r" in name:
            raise ConfigError("%s: class name %r is empty or has surrounding whitespace or newlines" % (where, name))
        if _SYNSET.match(name):
            raise ConfigError("%s: class name %r looks like a synset id (n########); imageNet would hide it"
                              % (where, name))
        raw = name.encode("utf-8")
        if raw[:1] == b"n" and raw[9:10] == b" ":  # imageNet's synset rule: 'n' at [0], a space at [9]
            raise ConfigError("%s: class name %r has 'n' first and a space 10th: jetson-inference's imageNet reads "
                              "such a line as '<synset> <description>' and would show it as %r; rename the class"
                              % (where, name, raw[10:].decode("utf-8", "replace")))
        if len(raw) > 510 or "\0" in name:  # imageNet reads labels.txt with fgets(str, 512): longer lines split
            raise ConfigError("%s: class name %r is over 510 bytes or has a NUL; imageNet cannot read it"
                              % (where, name[:40]))
    if len(set(names)) != len(names):
        raise ConfigError("%s: duplicate class names in %s" % (where, names))
    return list(names)


def write_labels(path, names):
    """Write ``names`` one per line, LF endings, final newline, atomically."""
    check_class_names(names, str(path))
    tmp = str(path) + ".part"
    with open(tmp, "w", newline="\n") as handle:
        handle.write("\n".join(names) + "\n")
    os.replace(tmp, str(path))


def read_labels(path):
    """Read class names from labels.txt (tolerates CRLF and a missing final newline)."""
    try:
        with open(str(path)) as handle:
            names = [line.rstrip("\r\n") for line in handle]
    except (IOError, OSError) as error:
        raise ConfigError("%s: cannot read labels (%s)" % (path, error))
    while names and names[-1] == "":
        names.pop()
    if "" in names:
        raise ConfigError("%s: blank line %d" % (path, names.index("") + 1))
    return check_class_names(names, str(path))
