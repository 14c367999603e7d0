"""Settings for the service from flags, an INI file, an /etc/default-style env file and STETHO_* variables.

Precedence, lowest first::

    the parser's defaults
    < INI file      --config FILE (or STETHO_CONFIG), section [service], keys = flag names
                    ('model-dir' or 'model_dir')
    < env file      --env-file FILE (or STETHO_ENV_FILE): KEY=value lines, '#' comments,
                    optional 'export ', shell quoting (what systemd's EnvironmentFile= reads)
    < environment   STETHO_<FLAG> variables, e.g. STETHO_MODEL_DIR=/opt/models/heart
    < command line

Keys are checked against the parser: an unknown key in a file is an error
naming the file and the key (a typo never silently falls back to a default);
unknown STETHO_* variables in the environment are ignored.  Values are
converted with the flag's own type and checked against its choices; booleans
(store_true flags) accept 1/0, true/false, yes/no, on/off.
"""
import argparse
import configparser
import os
import shlex
import sys

PREFIX = "STETHO_"
SECTION = "service"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


class SettingsError(ValueError):
    """A settings file or variable that cannot be used (names where it came from)."""


def read_ini(path, section=SECTION):
    """{key: str} from ``[section]`` of an INI file (keys lower-cased, '-' and '_' both accepted)."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as handle:
            parser.read_file(handle)
    except (IOError, OSError) as error:
        raise SettingsError("%s: cannot read config file (%s)" % (path, error))
    except UnicodeDecodeError as error:
        raise SettingsError("%s: not a text file (byte %d is not UTF-8)" % (path, error.start))
    except configparser.Error as error:
        raise SettingsError("%s: not a valid INI file (%s)" % (path, " ".join(str(error).split())))
    if not parser.has_section(section):
        raise SettingsError("%s: no [%s] section (found: %s)" % (path, section, ", ".join(parser.sections()) or "none"))
    return dict((key.replace("-", "_").lower(), value) for key, value in parser.items(section))


def read_env_file(path):
    """{NAME: value} from an /etc/default-style file: NAME=value, comments, 'export', shell quotes."""
    values = {}
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except (IOError, OSError) as error:
        raise SettingsError("%s: cannot read env file (%s)" % (path, error))
    except UnicodeDecodeError as error:
        raise SettingsError("%s: not a text file (byte %d is not UTF-8)" % (path, error.start))
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        name, sep, raw = line.partition("=")
        name = name.strip()
        if not sep or not name.replace("_", "").isalnum():
            raise SettingsError("%s:%d: expected NAME=value, got %r" % (path, number, line))
        try:
            parts = shlex.split(raw, comments=True)
        except ValueError as error:
            raise SettingsError("%s:%d: %s" % (path, number, error))
        values[name] = " ".join(parts)
    return values


def from_environment(environ, prefix=PREFIX):
    """{key: value} for every non-empty PREFIX* variable ('STETHO_MODEL_DIR' → 'model_dir').

    An empty value (``STETHO_HTTP=`` in an env file) means "not set", as systemd users expect.
    """
    return dict((name[len(prefix):].lower(), value) for name, value in environ.items()
                if name.startswith(prefix) and len(name) > len(prefix) and value != "")


def _actions(parser):
    return dict((action.dest, action) for action in parser._actions
                if action.dest not in ("help", argparse.SUPPRESS) and action.option_strings)


def convert(parser, values, origin, strict=True):
    """Turn {dest: str} into {dest: typed value} with the parser's own types and choices."""
    actions = _actions(parser)
    out = {}
    for key, raw in values.items():
        action = actions.get(key)
        if action is None:
            if strict:
                raise SettingsError("%s: unknown setting %r (known: %s)" % (origin, key, ", ".join(sorted(actions))))
            continue
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            word = str(raw).strip().lower()
            if word not in _TRUE + _FALSE:
                raise SettingsError("%s: %s=%r is not a boolean (use 1/0, true/false, yes/no)" % (origin, key, raw))
            value = word in _TRUE
            out[key] = value if isinstance(action, argparse._StoreTrueAction) else not value
            continue
        try:
            value = action.type(raw) if action.type is not None else raw
        except (TypeError, ValueError, argparse.ArgumentTypeError) as error:
            raise SettingsError("%s: %s=%r: %s" % (origin, key, raw, error))
        if action.choices is not None and value not in action.choices:
            raise SettingsError("%s: %s=%r is not one of %s" % (origin, key, raw, ", ".join(map(str, action.choices))))
        out[key] = value
    return out


def parse_settings(parser, argv=None, environ=None):
    """Parse ``argv`` with defaults taken from the config file, env file and environment (see module doc).

    The parser should define ``--config`` and ``--env-file``; their values
    may also come from STETHO_CONFIG / STETHO_ENV_FILE.  Returns the
    argparse Namespace; raises SettingsError for bad files or values.
    """
    environ = os.environ if environ is None else environ
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    pre.add_argument("--env-file")
    known, _ = pre.parse_known_args(argv)
    defaults = {}
    config = known.config or environ.get(PREFIX + "CONFIG")
    if config:
        defaults.update(convert(parser, read_ini(config), config))
    env_file = known.env_file or environ.get(PREFIX + "ENV_FILE")
    if env_file:
        entries = read_env_file(env_file)
        defaults.update(convert(parser, from_environment(entries), env_file))
    env = from_environment(environ)
    env.pop("config", None)
    env.pop("env_file", None)
    defaults.update(convert(parser, env, "environment", strict=False))
    parser.set_defaults(**defaults)
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------------------
# The service's values, checked before anything starts

# flag dest → (lowest, highest or None, what it is); NaN fails every comparison
SERVICE_LIMITS = (
    ("smooth", 1, 1000, "windows to smooth over"),
    ("threshold", 0.0, 1.0, "a probability"),
    ("max_windows", 0, None, "0: no limit"),
    ("threads", 1, 256, "threads"),
    ("block", 0.01, 5.0, "seconds of audio a loop turn reads"),
    ("retry_initial", 0.01, 3600.0, "seconds"),
    ("retry_max", 0.01, 3600.0, "seconds"),
)
QUALITY_FLAGS = ("silence_dbfs", "clip_fraction", "handling_share", "flatness")


def _flag(dest):
    return "--" + dest.replace("_", "-")


def check_http(spec, flag="--http"):
    """(host, port) of a HOST:PORT value (host '' = 127.0.0.1, port 0 = any free one); SettingsError if not."""
    host, sep, port = str(spec).rpartition(":")
    if not sep or not port.isdigit() or len(port) > 5 or int(port) > 65535:
        raise SettingsError("%s %r: expected HOST:PORT with a port 0-65535 (e.g. 127.0.0.1:8080)" % (flag, spec))
    if any(c.isspace() or c in "/\\'\"$`" for c in host):
        raise SettingsError("%s %r: %r is not a host name or address" % (flag, spec, host))
    return host, int(port)


def _stdin_is_open():
    try:
        os.fstat(0)
    except OSError:
        return False
    return True


def check_service_args(args):
    """Refuse values the service cannot run with, one SettingsError naming the flag (before anything starts).

    ``args``: the service's Namespace (deploy_jetson/service.py).  Numbers must be inside SERVICE_LIMITS, the
    --quality-* thresholds inside stetho.contract.QUALITY_LIMITS (None: the contract's), --http a HOST:PORT
    with a real port, --latest a file (not a folder), and --source stdin needs an open standard input.
    """
    from stetho.contract import quality_limit_problem
    for dest, low, high, what in SERVICE_LIMITS:
        value = getattr(args, dest, None)
        if value is None:
            continue
        if not (low <= value and (high is None or value <= high)):
            raise SettingsError("%s %r: must be %s (%s)" % (_flag(dest), value, "at least %s" % low if high is None
                                                          else "%s..%s" % (low, high), what))
    if args.retry_initial > args.retry_max:
        raise SettingsError("--retry-initial %g is longer than --retry-max %g" % (args.retry_initial, args.retry_max))
    for name in QUALITY_FLAGS:
        value = getattr(args, "quality_" + name, None)
        problem = None if value is None else quality_limit_problem(name, value)
        if problem:
            raise SettingsError("%s %s" % (_flag("quality_" + name), problem))
    if args.http:
        check_http(args.http)
    latest = getattr(args, "latest", None)
    if latest and (os.path.isdir(latest) or latest.endswith(("/", os.sep))):
        raise SettingsError("--latest %s: is a folder; give the PNG file's path (e.g. %s)"
                            % (latest, os.path.join(latest, "latest.png")))
    if args.source == "stdin" and (sys.stdin is None or not _stdin_is_open()):
        raise SettingsError("--source stdin: standard input is closed; pipe raw PCM in (e.g. arecord ... | service.py "
                            "--source stdin) or choose another --source")
