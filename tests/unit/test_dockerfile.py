"""Dockerfile parsing: what a build will run, as Docker would read the same file, or an error naming the line."""

from __future__ import annotations

import pytest

from corral.templates.dockerfile import (
    DEFAULT_PATH,
    Arg,
    BaseRef,
    Cmd,
    Copy,
    Dockerfile,
    DockerfileError,
    Entrypoint,
    Env,
    Expose,
    From,
    Heredoc,
    Label,
    Run,
    User,
    Workdir,
    base_of,
    parse,
)


def steps(text: str, **build_args: str) -> tuple:
    return parse(text, build_args).steps


def step(text: str, **build_args: str):
    """The one instruction after ``FROM base`` (which is line 1)."""
    (only,) = [s for s in steps("FROM base\n" + text, **build_args) if not isinstance(s, Arg)]
    return only


def error(text: str, **build_args: str) -> DockerfileError:
    with pytest.raises(DockerfileError) as info:
        parse(text, build_args)
    return info.value


# -- every instruction ------------------------------------------------------------------------------


def test_a_dockerfile_with_every_supported_instruction() -> None:
    df = parse(
        "FROM base AS app\n"
        "ARG VERSION=1\n"
        "ENV HOME=/home/user\n"
        "RUN apt-get update\n"
        "COPY app.py /app/\n"
        "ADD --chown=user:user data /data\n"
        "WORKDIR /app\n"
        "USER user\n"
        "LABEL org.example.version=$VERSION\n"
        "EXPOSE 8080\n"
        'ENTRYPOINT ["python3"]\n'
        'CMD ["app.py"]\n'
    )
    assert df.base == From(line=1, image="base", base=BaseRef("builtin", "base"), alias="app")
    assert df.steps == (
        Arg(line=2, name="VERSION", default="1", value="1"),
        Env(line=3, pairs=(("HOME", "/home/user"),)),
        Run(line=4, command="apt-get update", shell_form=True, build_args=(("VERSION", "1"),)),
        Copy(line=5, sources=("app.py",), dest="/app/"),
        Copy(line=6, sources=("data",), dest="/data", chown="user:user", add=True),
        Workdir(line=7, path="/app"),
        User(line=8, user="user"),
        Label(line=9, pairs=(("org.example.version", "1"),)),
        Expose(line=10, ports=("8080/tcp",)),
        Entrypoint(line=11, command=("python3",), shell_form=False),
        Cmd(line=12, command=("app.py",), shell_form=False),
    )
    assert df.start_command == ("python3", "app.py")
    assert df.warnings == ()


def test_instruction_names_are_case_insensitive() -> None:
    df = parse("from base as Build\nrun echo hi\nWorkDir /x\n")
    assert df.base.alias == "build"
    assert [type(s) for s in df.steps] == [Run, Workdir]


def test_instructions_are_frozen() -> None:
    run = step("RUN true")
    with pytest.raises(AttributeError):
        run.command = "false"  # type: ignore[misc]


def test_maintainer_becomes_a_label() -> None:
    assert step("MAINTAINER Jane <jane@example.com>") == Label(
        line=2, pairs=(("maintainer", "Jane <jane@example.com>"),))


def test_expose_forms() -> None:
    assert step("EXPOSE 80 443/TCP 53/udp 8000-8010").ports == ("80/tcp", "443/tcp", "53/udp", "8000-8010/tcp")


@pytest.mark.parametrize("port", ["0", "70000", "80/icmp", "127.0.0.1:80:80", "90-80"])
def test_bad_ports_are_refused(port: str) -> None:
    assert "invalid port" in error(f"FROM base\nEXPOSE {port}\n").message


def test_copy_flags_and_json_form() -> None:
    assert step('COPY --chown=1000:1000 --chmod=640 --link ["my file", "/dst dir/"]') == Copy(
        line=2, sources=("my file",), dest="/dst dir/", chown="1000:1000", chmod=0o640, link=True)


# -- lines: continuations, comments, directives ---------------------------------------------------------


def test_continuations_join_lines_skipping_comments_and_keep_the_first_line_number() -> None:
    df = parse("FROM base\n\nRUN apt-get update \\\n    # a comment inside\n    && apt-get install -y git\nUSER user\n")
    run, user = df.steps
    assert run == Run(line=3, command="apt-get update     && apt-get install -y git", shell_form=True)
    assert user.line == 6
    assert df.warnings == ()


def test_an_empty_continuation_line_is_skipped_with_a_warning() -> None:
    df = parse("FROM base\nRUN a \\\n\n  b\n")
    assert df.steps[0].command == "a   b"
    assert df.warnings == ("Dockerfile:3: empty continuation line (Docker deprecates these)",)


def test_continuation_with_trailing_blanks_and_at_end_of_file() -> None:
    assert steps("FROM base\nRUN a \\  \t\n b \\")[0].command == "a  b"


def test_comments_are_whole_lines_only() -> None:
    df = parse("# top\nFROM base\n   # indented comment\nRUN echo hi # not a comment\n")
    assert df.steps[0].command == "echo hi # not a comment"


def test_escape_directive_switches_to_backtick() -> None:
    df = parse("# escape=`\nFROM base\nRUN dir C:\\Windows `\n  && echo ok\nWORKDIR C:\\app\n")
    assert df.escape == "`"
    assert df.steps[0].command == "dir C:\\Windows   && echo ok"
    assert df.steps[1].path == "C:\\app"


def test_a_directive_after_an_instruction_is_just_a_comment() -> None:
    df = parse("FROM base\n# escape=`\nRUN a \\\n b\n")
    assert df.escape == "\\"
    assert df.steps[0].command == "a  b"


@pytest.mark.parametrize(("text", "message"), [
    ("# escape=x\nFROM base\n", "invalid escape token 'x'"),
    ("# escape=`\n# escape=\\\nFROM base\n", "only one escape parser directive"),
])
def test_bad_directives(text: str, message: str) -> None:
    assert message in str(error(text))


def test_crlf_line_endings_and_a_byte_order_mark() -> None:
    df = parse("\ufeffFROM base\r\nRUN a \\\r\n b\r\n")
    assert df.steps[0].command == "a  b"


# -- exec form and shell form -------------------------------------------------------------------------------


@pytest.mark.parametrize("keyword", ["RUN", "CMD", "ENTRYPOINT"])
def test_exec_and_shell_forms(keyword: str) -> None:
    exec_form = step(f'{keyword} ["/bin/echo", "a b", "$HOME"]')
    assert (exec_form.command, exec_form.shell_form) == (("/bin/echo", "a b", "$HOME"), False)
    shell_form = step(f"{keyword} echo $HOME")
    assert (shell_form.command, shell_form.shell_form) == ("echo $HOME", True)


def test_text_starting_with_a_bracket_that_is_not_json_is_shell_form() -> None:
    df = parse("FROM base\nRUN [ -d /x ] || mkdir /x\n")
    assert df.steps[0] == Run(line=2, command="[ -d /x ] || mkdir /x", shell_form=True)
    assert df.warnings == ()


def test_a_failed_exec_form_runs_as_shell_like_docker_but_warns() -> None:
    df = parse("FROM base\nCMD ['python3', 'app.py']\n")
    assert df.steps[0] == Cmd(line=2, command="['python3', 'app.py']", shell_form=True)
    assert df.warnings == ("Dockerfile:2: CMD looks like exec form but is not a JSON array (use double quotes); "
                           "it runs as a shell command, as in Docker",)


def test_exec_form_with_a_non_string_is_an_error() -> None:
    assert str(error('FROM base\nCMD ["sleep", 10]\n')) == \
        "Dockerfile:2: CMD exec form must be a JSON array of strings"


def test_empty_exec_form() -> None:
    assert step("CMD []") == Cmd(line=2, command=(), shell_form=False)
    assert "RUN needs a command" in str(error("FROM base\nRUN []\n"))


@pytest.mark.parametrize(("entrypoint", "cmd", "expected"), [
    (None, None, None),
    (None, '["a", "b"]', ("a", "b")),
    (None, "a b", ("/bin/sh", "-c", "a b")),
    ('["e"]', '["a"]', ("e", "a")),
    ('["e"]', "a b", ("e", "/bin/sh", "-c", "a b")),
    ('["e"]', None, ("e",)),
    ("e x", '["a"]', ("/bin/sh", "-c", "e x")),
])
def test_start_command_combines_entrypoint_and_cmd_like_docker(entrypoint, cmd, expected) -> None:
    text = "FROM base\n" + (f"ENTRYPOINT {entrypoint}\n" if entrypoint else "") + (f"CMD {cmd}\n" if cmd else "")
    assert parse(text).start_command == expected


def test_the_last_cmd_wins_with_a_warning() -> None:
    df = parse('FROM base\nCMD ["a"]\nCMD ["b"]\n')
    assert df.start_command == ("b",)
    assert df.warnings == ("Dockerfile:3: only the last CMD takes effect (also on lines 2)",)


# -- ENV, LABEL and substitution ----------------------------------------------------------------------------


def test_env_pairs_quotes_and_escapes() -> None:
    assert step(r"""ENV A=1 B="two words" C='single $A' D=four\ five E= F=""""") == Env(
        line=2, pairs=(("A", "1"), ("B", "two words"), ("C", "single $A"), ("D", "four five"), ("E", ""), ("F", "")))


def test_legacy_env_form_takes_the_rest_of_the_line() -> None:
    assert step("ENV GREETING hello   big world").pairs == (("GREETING", "hello   big world"),)


def test_env_sees_values_from_before_the_instruction() -> None:
    df = parse("FROM base\nENV abc=hello\nENV abc=bye def=$abc\nENV ghi=$abc\n")
    assert df.steps[1].pairs == (("abc", "bye"), ("def", "hello"))
    assert df.steps[2].pairs == (("ghi", "bye"),)


def test_env_substitution_sees_the_base_path() -> None:
    assert step("ENV PATH=/opt/venv/bin:$PATH").pairs == (("PATH", f"/opt/venv/bin:{DEFAULT_PATH}"),)
    df = parse("FROM my-template\nENV P=$PATH:/x\n", base_env=lambda base: {"PATH": f"/{base.name}/bin"})
    assert df.steps[0].pairs == (("P", "/my-template/bin:/x"),)


@pytest.mark.parametrize(("value", "expected"), [
    ("$V", "set"), ("${V}", "set"), ("x${V}y", "xsety"), ("$V$V", "setset"),
    ("${V:-d}", "set"), ("${UNSET:-d}", "d"), ("${EMPTY:-d}", "d"), ("${EMPTY-d}", ""), ("${UNSET-d}", "d"),
    ("${V:+alt}", "alt"), ("${EMPTY:+alt}", ""), ("${EMPTY+alt}", "alt"), ("${UNSET+alt}", ""),
    ("${UNSET:-${V}}", "set"), ('"${UNSET:-a b}"', "a b"), ("${UNSET:-'q'}", "q"), ("${V:?must}", "set"),
    ("$UNSET", ""), (r"\$V", "$V"), ("'$V'", "$V"), ('"$V"', "set"), (r'"\$V \"q\""', '$V "q"'),
    ('"a\\b"', "a\\b"), ("$", "$"), ("a$-b", "ab"), ("$1x", "x"), ('"a$ b"', "a$ b"), ("${V}_x", "set_x"), ("$V_x", ""),
])
def test_substitution(value: str, expected: str) -> None:
    df = parse(f'FROM base\nENV V=set EMPTY=""\nLABEL l={value}\n')
    assert df.steps[1].pairs == (("l", expected),)


@pytest.mark.parametrize(("value", "message"), [
    ("${UNSET:?required}", "UNSET: required"),
    ("${UNSET?}", "UNSET: is not allowed to be unset"),
    ("${EMPTY:?}", "EMPTY: is not allowed to be empty"),
    ("${V#prefix}", "unsupported modifier (#)"),
    ("${V/a/b}", "unsupported modifier (/)"),
    ("${V", "missing '}'"),
    ("${}", "bad substitution"),
    ('"open', "matching double-quote"),
    ("'open", "matching single-quote"),
])
def test_bad_substitutions_name_their_line(value: str, message: str) -> None:
    err = error(f"FROM base\nENV V=1 EMPTY=\nLABEL l={value}\n")
    assert err.line == 3
    assert message in err.message


def test_substitution_happens_where_docker_does_it() -> None:
    df = parse(
        "ARG IMG=base\nFROM $IMG\nARG D=/srv U=app P=9000 SRC=src\n"
        "WORKDIR ${D}/app\nUSER $U\nEXPOSE $P\nCOPY --chown=$U $SRC/ $D/\nADD $SRC.tar $D/\nLABEL $U=$P\n"
        "RUN echo $D\nCMD echo $D\nENTRYPOINT [\"echo\", \"$D\"]\n"
    )
    assert df.base.image == "base"
    workdir, user, expose, copy, add, label, run, cmd, entrypoint = df.steps[4:]
    assert workdir.path == "/srv/app"
    assert user.user == "app"
    assert expose.ports == ("9000/tcp",)
    assert (copy.sources, copy.dest, copy.chown) == (("src/",), "/srv/", "app")
    assert (add.sources, add.dest) == (("src.tar",), "/srv/")
    assert label.pairs == (("app", "9000"),)
    assert run.command == "echo $D"
    assert cmd.command == "echo $D"
    assert entrypoint.command == ("echo", "$D")


def test_expose_splits_a_substituted_list() -> None:
    df = parse('FROM base\nENV PORTS="80 443/udp"\nEXPOSE $PORTS "8080"\n')
    assert df.steps[1].ports == ("80/tcp", "443/udp", "8080/tcp")


# -- ARG scoping and build args -----------------------------------------------------------------------------


def test_an_arg_before_from_is_visible_to_from_only() -> None:
    df = parse("ARG BASE=code-interpreter\nFROM ${BASE}\nENV B=${BASE:-gone}\n")
    assert df.base.base == BaseRef("builtin", "code-interpreter")
    assert df.steps[0].pairs == (("B", "gone"),)


def test_redeclaring_a_global_arg_after_from_takes_its_value() -> None:
    df = parse("ARG V=1\nFROM base\nARG V\nENV B=$V\n", {"V": "2"})
    assert df.steps[0] == Arg(line=3, name="V", default=None, value="2")
    assert df.steps[1].pairs == (("B", "2"),)
    assert parse("ARG V=1\nFROM base\nARG V\nENV B=$V\n").steps[1].pairs == (("B", "1"),)


def test_build_args_override_defaults_and_reach_run() -> None:
    df = parse("FROM base\nARG A=a B=b C\nRUN echo $A\n", {"A": "x"})
    assert df.steps[:3] == (
        Arg(line=2, name="A", default="a", value="x"),
        Arg(line=2, name="B", default="b", value="b"),
        Arg(line=2, name="C", default=None, value=None),
    )
    assert df.steps[3].build_args == (("A", "x"), ("B", "b"))


def test_a_declared_arg_without_a_value_is_unset() -> None:
    assert step("ARG X\nENV Y=${X-unset}").pairs == (("Y", "unset"),)


def test_undeclared_build_args_are_warnings_not_values() -> None:
    df = parse("FROM base\nENV A=${NOPE:-none}\n", {"NOPE": "x", "HTTP_PROXY": "http://proxy:3128"})
    assert df.steps[0].pairs == (("A", "none"),)
    assert df.warnings == ("build arg NOPE was given but no ARG declares it (not used)",)


def test_env_beats_an_arg_of_the_same_name() -> None:
    df = parse("FROM base\nARG X=arg\nENV X=env\nARG X=again\nLABEL x=$X\n")
    assert df.steps[-1].pairs == (("x", "env"),)


def test_arg_defaults_see_earlier_args_but_not_their_own_line() -> None:
    df = parse("FROM base\nARG A=1\nARG B=$A C=${B:-none}\n")
    assert [(a.name, a.value) for a in df.steps] == [("A", "1"), ("B", "1"), ("C", "none")]


def test_platform_args_are_automatic_before_from() -> None:
    df = parse("FROM base\nARG TARGETOS\nLABEL os=$TARGETOS arch=${TARGETARCH:-undeclared}\n")
    assert df.steps[1].pairs == (("os", "linux"), ("arch", "undeclared"))


# -- heredocs -------------------------------------------------------------------------------------------


def test_a_lone_heredoc_is_the_script() -> None:
    run = step("RUN <<EOF\napt-get update\napt-get install -y git\nEOF")
    assert run.heredocs == (Heredoc(name="EOF", content="apt-get update\napt-get install -y git\n"),)
    assert run.script == "apt-get update\napt-get install -y git\n"


def test_a_heredoc_with_a_shebang_is_a_script_file() -> None:
    run = step("RUN <<EOF\n#!/usr/bin/env python3\nprint('hi')\nEOF")
    assert run.script.startswith("#!/usr/bin/env python3\n")


def test_a_heredoc_fed_to_a_command_becomes_a_shell_heredoc() -> None:
    df = parse("FROM base\nRUN python3 - <<'PY' > /out \\\n  && cat /out\nprint('$HOME')\nPY\nUSER x\n")
    run, user = df.steps
    assert run.heredocs == (Heredoc(name="PY", content="print('$HOME')\n", expand=False),)
    assert run.script == "python3 - <<'PY' > /out   && cat /out\nprint('$HOME')\nPY\n"
    assert user.line == 6


def test_chomped_heredocs_and_several_on_one_line() -> None:
    run = step("RUN <<-A cat - /dev/fd/3 3<<B\n\t\tone\n\tA\ntwo\nB")
    assert run.heredocs == (Heredoc(name="A", content="\t\tone\n", chomp=True), Heredoc(name="B", content="two\n"))
    assert run.heredocs[0].text == "one\n"
    assert run.script == "<<-A cat - /dev/fd/3 3<<B\n\t\tone\nA\ntwo\nB\n"


def test_here_strings_and_quoted_chevrons_are_not_heredocs() -> None:
    assert step('RUN cat <<<"x" && echo "<<EOF"').heredocs == ()


def test_copy_heredoc_is_an_inline_file_with_variables_expanded() -> None:
    text = "FROM base\nENV NAME=world\nCOPY <<hello.txt <<'raw.txt' /srv/\nhi $NAME \\$NAME\nhello.txt\n$NAME\nraw.txt"
    copy = steps(text)[-1]
    assert copy == Copy(line=3, sources=(), dest="/srv/", heredocs=(
        Heredoc(name="hello.txt", content="hi world $NAME\n"),
        Heredoc(name="raw.txt", content="$NAME\n", expand=False),
    ))


def test_an_unterminated_heredoc_is_an_error() -> None:
    err = error("FROM base\nRUN <<EOF\necho hi\n")
    assert str(err) == "Dockerfile:2: unterminated heredoc: no line 'EOF' after line 2"


# -- errors -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("instruction", [
    "HEALTHCHECK CMD curl -f http://localhost/",
    "ONBUILD RUN make",
    "STOPSIGNAL SIGTERM",
    'SHELL ["/bin/bash", "-c"]',
    "VOLUME /data",
    "healthcheck NONE",
])
def test_unsupported_instructions_fail_with_their_line(instruction: str) -> None:
    err = error(f"FROM base\nRUN true\n\n{instruction}\n")
    keyword = instruction.split()[0].upper()
    assert err.line == 4
    assert str(err).startswith(f"Dockerfile:4: {keyword} is not supported by Corral yet (")


@pytest.mark.parametrize(("text", "line", "message"), [
    ("FROM base\nRUN a\nFROM base\n", 3,
     "multi-stage builds (a second FROM; the first is on line 1) are not supported by Corral yet"),
    ("FROM base\nCOPY --from=build /a /b\n", 2, "COPY --from (multi-stage builds) is not supported by Corral yet"),
    ("FROM base\nRUN --mount=type=cache,target=/root/.cache pip install x\n", 2,
     "RUN --mount is not supported by Corral yet"),
    ("FROM base\nRUN --network=none true\n", 2, "RUN --network is not supported by Corral yet"),
    ("FROM base\nADD https://example.com/a.tgz /a\n", 2,
     "ADD from a URL (https://example.com/a.tgz) is not supported by Corral yet; download it in a RUN"),
    ("FROM base\nADD --checksum=sha256:abc a /a\n", 2, "ADD --checksum is not supported by Corral yet"),
    ("FROM base\nCOPY --parents a/b /x/\n", 2, "COPY --parents is not supported by Corral yet"),
    ("FROM base\nENV --x=1 A=b\n", 2, "ENV --x is not supported by Corral yet"),
    ("FROM base\nCPOY a /a\n", 2, "unknown instruction: CPOY (did you mean COPY?)"),
    ("FROM base\nFROBNICATE\n", 2, "unknown instruction: FROBNICATE"),
    ("ARG A\nRUN true\nFROM base\n", 2, "RUN before FROM: a Dockerfile starts with FROM (only ARG may come first)"),
    ("FROM base\nCOPY onlyone\n", 2, "COPY requires at least two arguments: sources and a destination"),
    ("FROM base\nCOPY a b /dst\n", 2, "with more than one source, the COPY destination must be a directory"),
    ("FROM base\nCOPY --chmod=u+x a /a\n", 2, "invalid --chmod=u+x: use octal permissions such as 755"),
    ("FROM base\nCOPY --chown=a --chown=b a /a\n", 2, "--chown given twice"),
    ("FROM base\nWORKDIR\n", 2, "WORKDIR requires at least one argument"),
    ("FROM base\nWORKDIR $NOTHING\n", 2, "WORKDIR is empty after substitution"),
    ("FROM base\nENV A\n", 2, "ENV must have two arguments (or name=value pairs)"),
    ("FROM base\nENV A=1 B\n", 2, "can't find = in 'B': ENV takes name=value pairs"),
    ("FROM base\nENV =1\n", 2, "ENV names can not be blank"),
    ("FROM base\nARG =1\n", 2, "ARG names can not be blank"),
    ("FROM base extra\n", 1, "FROM takes an image and optionally AS name"),
    ("FROM base AS 1st\n", 1, "invalid stage name '1st'"),
    ("FROM scratch\n", 1, "FROM scratch is not supported"),
    ("ARG IMG\nFROM $IMG\n", 2, "FROM needs an image"),
])
def test_errors_name_the_line(text: str, line: int, message: str) -> None:
    err = error(text)
    assert err.line == line
    assert err.message.startswith(message)
    assert str(err) == f"Dockerfile:{line}: {err.message}"


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n\n   \n"])
def test_an_empty_dockerfile_is_an_error(text: str) -> None:
    err = error(text)
    assert (err.line, str(err)) == (None, "Dockerfile: the Dockerfile is empty (it needs at least FROM)")


def test_a_dockerfile_without_from_is_an_error() -> None:
    err = error("ARG A=1\n")
    assert str(err) == "Dockerfile: no FROM instruction: a Dockerfile starts FROM a base (e.g. FROM base)"


def test_error_line_is_where_a_continued_instruction_starts() -> None:
    assert error("FROM base\nRUN true\nVOLUME \\\n  /data\n").line == 3


# -- bases ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("image", "expected"), [
    ("base", BaseRef("builtin", "base")),
    ("code-interpreter", BaseRef("builtin", "code-interpreter")),
    ("debian", BaseRef("builtin", "base")),
    ("debian:bookworm", BaseRef("builtin", "base")),
    ("debian:bookworm-slim", BaseRef("builtin", "base")),
    ("debian:bookworm-20240110-slim", BaseRef("builtin", "base")),
    ("debian:12", BaseRef("builtin", "base")),
    ("debian:12.5-slim", BaseRef("builtin", "base")),
    ("python:3", BaseRef("builtin", "base")),
    ("python:3.11", BaseRef("builtin", "base")),
    ("python:3.11-slim", BaseRef("builtin", "base")),
    ("python:3.11.7-slim-bookworm", BaseRef("builtin", "base")),
    ("my-app", BaseRef("template", "my-app")),
    ("team.app_v2", BaseRef("template", "team.app_v2")),
    ("library/alpine", BaseRef("oci", "docker.io/library/alpine:latest")),
    ("ghcr.io/org/img:1.2", BaseRef("oci", "ghcr.io/org/img:1.2")),
    ("localhost:5000/img", BaseRef("oci", "localhost:5000/img:latest")),
    ("docker.io/library/ubuntu:24.04", BaseRef("oci", "docker.io/library/ubuntu:24.04")),
    ("alpine@sha256:" + "a" * 64, BaseRef("oci", "docker.io/library/alpine@sha256:" + "a" * 64)),
    ("registry.example.com:443/a/b:v1@sha256:" + "b" * 64,
     BaseRef("oci", "registry.example.com:443/a/b:v1@sha256:" + "b" * 64)),
])
def test_base_of(image: str, expected: BaseRef) -> None:
    assert base_of(image) == expected


@pytest.mark.parametrize(("image", "message"), [
    ("ubuntu", "ubuntu is not available: Corral's bases are Debian 12 (bookworm)"),
    ("ubuntu:22.04", "write docker.io/library/ubuntu:22.04 to pull"),
    ("debian:trixie", "debian:trixie is not available"),
    ("debian:11", "debian:11 is not available"),
    ("python:3.12", "python:3.12 is not available"),
    ("python:3.11-alpine", "python:3.11-alpine is not available"),
    ("node:20", "node:20 is neither a Corral base nor a template; write docker.io/library/node:20"),
    ("base:latest", "built-in templates have no tags; write FROM base"),
    ("Base", "repository names must be lowercase"),
    ("ghcr.io/Org/img", "invalid image reference"),
    ("img@sha256:xyz", "bad digest"),
    ("", "FROM needs an image"),
])
def test_base_of_refuses_what_corral_lacks(image: str, message: str) -> None:
    with pytest.raises(DockerfileError) as info:
        base_of(image)
    assert info.value.line is None
    assert message in info.value.message


def test_from_errors_get_the_from_line() -> None:
    err = error("ARG V=22.04\n\nFROM ubuntu:$V\n")
    assert err.line == 3
    assert "ubuntu:22.04 is not available" in err.message


def test_from_platform_and_alias() -> None:
    df = parse("ARG P=linux/amd64\nFROM --platform=$P python:3.11 AS Py\n")
    assert df.base == From(line=2, image="python:3.11", base=BaseRef("builtin", "base"), alias="py",
                           platform="linux/amd64")


# -- cache-key view ----------------------------------------------------------------------------------------


def test_key_leaves_out_the_line_and_build_args() -> None:
    a = parse("FROM base\nARG V=1\nRUN make\n").steps[1]
    b = parse("FROM base\n\n# moved\nARG V=2\nRUN make\n").steps[1]
    assert a.line != b.line and a.build_args != b.build_args
    assert a.key() == b.key() == {"instruction": "RUN", "command": "make", "shell_form": True, "heredocs": []}


def test_key_reflects_substituted_values() -> None:
    one = parse("FROM base\nARG D=/a\nCOPY x $D/\n").steps[1].key()
    two = parse("FROM base\nARG D=/a\nCOPY x $D/\n", {"D": "/b"}).steps[1].key()
    assert one["dest"] == "/a/" and two["dest"] == "/b/"


def test_dockerfile_is_a_plain_value() -> None:
    text = "FROM base\nRUN true\n"
    assert parse(text) == parse(text)
    assert isinstance(parse(text), Dockerfile)
