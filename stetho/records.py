"""A tiny immutable-ish record type for configs (Python 3.6 has no dataclasses).

Subclasses list ``FIELDS`` as ``(name, default)`` pairs and may list ``NESTED``
(``{name: RecordSubclass}``) for fields that are themselves records.  Records
round-trip through plain dicts (``to_dict`` / ``from_dict``) so they can be
stored as JSON in ``model.json`` and ``prepare.json``; unknown keys are refused
by name so a typo never silently falls back to a default.
"""
import copy

from .errors import ConfigError


class Record(object):
    FIELDS = ()
    NESTED = {}
    # Fields added after records were first stored: left out of to_dict() while they hold their default,
    # so every record saved before they existed keeps its dict, its hash and its meaning.
    OMITTED_AT_DEFAULT = ()

    def __init__(self, **kwargs):
        names = [name for name, _ in self.FIELDS]
        unknown = sorted(set(kwargs) - set(names))
        if unknown:
            raise ConfigError("%s: unknown field(s) %s; known fields are %s"
                              % (type(self).__name__, ", ".join(unknown), ", ".join(names)))
        for name, default in self.FIELDS:
            value = kwargs.get(name, copy.deepcopy(default))
            nested = self.NESTED.get(name)
            if nested is not None and isinstance(value, dict):
                value = nested.from_dict(value)
            object.__setattr__(self, name, value)
        self.validate()

    def __setattr__(self, name, value):
        raise AttributeError("%s is read-only; use .replace(%s=...)" % (type(self).__name__, name))

    def validate(self):
        """Raise ConfigError when the field values are inconsistent. Override in subclasses."""

    def replace(self, **changes):
        """A copy with some fields changed (validated again)."""
        values = dict((name, getattr(self, name)) for name, _ in self.FIELDS)
        values.update(changes)
        return type(self)(**values)

    def to_dict(self):
        out = {}
        for name, default in self.FIELDS:
            value = getattr(self, name)
            if name in self.OMITTED_AT_DEFAULT and value == default:
                continue
            out[name] = value.to_dict() if isinstance(value, Record) else copy.deepcopy(value)
        return out

    @classmethod
    def from_dict(cls, data):
        if not isinstance(data, dict):
            raise ConfigError("%s: expected a mapping, got %s" % (cls.__name__, type(data).__name__))
        return cls(**data)

    def __eq__(self, other):
        return type(self) is type(other) and self.to_dict() == other.to_dict()

    def __ne__(self, other):
        return not self == other

    def __hash__(self):
        return hash(repr(self))

    def __repr__(self):
        parts = ", ".join("%s=%r" % (name, getattr(self, name)) for name, _ in self.FIELDS)
        return "%s(%s)" % (type(self).__name__, parts)
