"""The container image: built from the Dockerfile with podman, and the bot in it run against the emulator.

No image registry is reachable from CI, so the Dockerfile's base
(python:3.11-slim) is swapped with `--from` for a local stand-in that
.ci/image-base makes with debootstrap once (podman keeps it). podman's OCI
runtime cannot start containers on these machines (cgroups, setrlimit), so
the container's file system is mounted (`podman create` + `podman mount`) and
its CMD run there with chroot, as its USER, in its WORKDIR, with its ENV and
the data volume bind-mounted where its VOLUME is: what a container runtime
does, less the isolation the test does not need.

`make test` installs podman and debootstrap (as root). PODMAN= (empty) leaves
this module out on a machine that cannot have them.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from bot.emulator import BotAPIEmulator, running_emulator
from tests.support.bot_process import ROOT, START_SECONDS, BotProcess
from tests.support.questionnaire import exchanges

BASE_IMAGE = "localhost/questionnaire-bot-base:bookworm"
BUILD_SECONDS = 900  # a clean machine: debootstrap, then pip installing the requirements
# What the image adds to its base: the dependencies' virtual environment and the code.
MOST_ADDED_MB = 150

# sh -c CHROOT_SCRIPT VOLUME MOUNTPOINT UID:GID ROOT WORKDIR CMD...
CHROOT_SCRIPT = (
    'mount --bind "$0" "$1" && userspec=$2 && root=$3 && shift 3 && '
    'exec chroot --userspec="$userspec" "$root" /bin/sh -c \'cd "$0" && exec "$@"\' "$@"'
)

pytestmark = pytest.mark.asyncio(loop_scope="module")


def podman() -> str:
    """podman's path; a missing podman fails with what to do, PODMAN= skips."""
    name = os.environ.get("PODMAN", "podman")
    if not name:
        pytest.skip("PODMAN is empty: the image is not built (make test installs podman and builds it)")
    found = shutil.which(name)
    if found is None or shutil.which("debootstrap") is None:
        pytest.fail(
            f"{name} or debootstrap is not installed: `apt-get install podman debootstrap` as root "
            "(make test does it), or set PODMAN= to leave the image test out"
        )
    if os.geteuid() != 0:
        pytest.fail("the image test runs as root (podman's image store, mount, chroot); or set PODMAN= to leave it out")
    return found


def run(*command: str, timeout: float = 120) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        msg = f"{' '.join(command)} exited with {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        raise AssertionError(msg)
    return done.stdout.strip()


@dataclass
class Image:
    podman: str
    tag: str
    size: int
    base_size: int
    # From its configuration, what a container runtime reads.
    user: str
    env: dict[str, str]
    workdir: str
    cmd: list[str]
    volumes: list[str]

    @classmethod
    def inspect(cls, podman: str, tag: str, base_tag: str) -> Image:
        [inspected] = json.loads(run(podman, "image", "inspect", tag))
        [base] = json.loads(run(podman, "image", "inspect", base_tag))
        config = inspected["Config"]
        return cls(
            podman,
            tag,
            size=int(inspected["Size"]),
            base_size=int(base["Size"]),
            user=str(config["User"]),
            env=dict(str(item).split("=", 1) for item in config["Env"]),
            workdir=str(config["WorkingDir"]),
            cmd=[str(part) for part in config["Cmd"]],
            volumes=list(config["Volumes"]),
        )


@pytest.fixture(scope="module")
def image() -> Iterator[Image]:
    tool = podman()
    run(str(ROOT / ".ci" / "image-base"), BASE_IMAGE, timeout=BUILD_SECONDS)
    tag = f"localhost/questionnaire-bot:test-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    build = ("build", "--isolation", "chroot", "--network", "host", "--from", BASE_IMAGE, "--tag", tag, str(ROOT))
    run(tool, *build, timeout=BUILD_SECONDS)
    built_in = time.monotonic() - started
    try:
        built = Image.inspect(tool, tag, BASE_IMAGE)
        print(  # shown with -s, and in CI's log on a failure
            f"\nimage {tag}: {built.size / 1e6:.0f} MB, {(built.size - built.base_size) / 1e6:.0f} MB over its "
            f"base ({built.base_size / 1e6:.0f} MB); built in {built_in:.0f} s",
            file=sys.stderr,
        )
        yield built
    finally:
        run(tool, "rmi", "--force", tag)


class Container:
    """A container of the image: its file system mounted, removed on exit."""

    def __init__(self, image: Image) -> None:
        self.image = image
        self.id = run(image.podman, "create", image.tag)
        try:
            self.root = Path(run(image.podman, "mount", self.id))
        except BaseException:
            run(image.podman, "rm", "--force", self.id)
            raise

    def remove(self) -> None:
        try:
            run(self.image.podman, "umount", self.id)
        finally:
            run(self.image.podman, "rm", "--force", self.id)

    def user(self) -> tuple[int, int]:
        """The image's USER as uid and gid, read from the image's own /etc/passwd."""
        user = self.image.user
        for line in (self.root / "etc" / "passwd").read_text().splitlines():
            name, _, uid, gid, *_ = line.split(":")
            if user in (name, uid):
                return int(uid), int(gid)
        raise AssertionError(f"USER {user} is not in the image's /etc/passwd")


class ContainedBot(BotProcess):
    """The image's CMD in a container's file system: chroot as its USER, its VOLUME bind-mounted."""

    def __init__(self, emulator: BotAPIEmulator, api_url: str, log_path: Path, container: Container, volume: Path):
        super().__init__(emulator, api_url, log_path, {})
        image = container.image
        # Only what a container would have: the image's ENV and what `docker run --env` passes.
        self.env = {**image.env, "BOT_TOKEN": emulator.token, "TELEGRAM_API_URL": api_url, "LOG_LEVEL": "DEBUG"}
        [data] = image.volumes
        uid, gid = container.user()
        root = container.root
        # unshare: the bind mount lives in the bot's own mount namespace, and ends with it.
        # Every step execs the next, so the bot is the process the test signals.
        self.command = [
            "unshare", "--mount", "--propagation", "private", "--",
            "sh", "-c", CHROOT_SCRIPT,
            str(volume), f"{root}{data}", f"{uid}:{gid}", str(root), image.workdir, *image.cmd,
        ]  # fmt: skip

    async def start(self, ready_on: str = "getUpdates") -> None:
        polls_before = self.emulator.calls.count(ready_on)
        await self._spawn(*self.command)
        assert self.process is not None
        async with asyncio.timeout(START_SECONDS):
            while self.emulator.calls.count(ready_on) == polls_before:
                assert self.process.returncode is None, f"the bot exited:\n{self.output()}"
                await asyncio.sleep(0.05)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def emulated() -> AsyncIterator[tuple[BotAPIEmulator, str]]:
    async with running_emulator(BotAPIEmulator()) as (emulator, api_url):
        yield emulator, api_url


async def test_the_image_is_small_and_carries_no_build_tools(image: Image) -> None:
    assert (image.size - image.base_size) / 1e6 < MOST_ADDED_MB
    container = Container(image)
    try:
        venv = container.root / "opt" / "venv"
        assert (venv / "bin" / "python").is_symlink()  # to the base image's Python
        assert not list(venv.glob("bin/pip*")), "pip stays in the build stage"
        assert not list(venv.rglob("*.c")), "C sources stay in the build stage"
        assert not (container.root / "usr" / "bin" / "gcc").exists()
        assert not (container.root / "app" / "tests").exists()
        assert not (container.root / "app" / ".venv").exists()
        assert image.user == "10001"
        assert image.cmd == ["python", "main.py"]
    finally:
        container.remove()


async def test_the_bot_in_the_image_answers_and_resumes_after_a_restart_with_its_volume(
    image: Image, emulated: tuple[BotAPIEmulator, str], tmp_path: Path
) -> None:
    emulator, api_url = emulated
    talk = exchanges()  # /start and each answer, with the bot's reply as the user reads it
    first_half, second_half = talk[: len(talk) // 2], talk[len(talk) // 2 :]
    volume = tmp_path / "bot-data"
    volume.mkdir(mode=0o700)
    first = Container(image)
    try:
        os.chown(volume, *first.user())
        async with ContainedBot(emulator, api_url, tmp_path / "first.log", first, volume) as bot:
            await bot.start()
            for text, reply in first_half:
                assert await bot.say(1, text) == [reply]
            assert await bot.stop(signal.SIGTERM) == 0
    finally:
        first.remove()
    # The conversation is in the volume, written by the image's user, not in the container (beside it,
    # the polling lock's file, storage/leadership.py).
    database = volume / "bot.db"
    assert database.stat().st_uid == int(image.user)
    assert {path.name for path in volume.iterdir()} - {database.name} <= {
        path.name for path in volume.glob("bot.db.polling.*.leader")
    }

    second = Container(image)  # a new container of the same image, as after a redeploy
    try:
        async with ContainedBot(emulator, api_url, tmp_path / "second.log", second, volume) as bot:
            await bot.start()
            for text, reply in second_half:  # where the first container left off
                assert await bot.say(1, text) == [reply]
            assert await bot.stop(signal.SIGTERM) == 0
    finally:
        second.remove()
    assert emulator.token not in bot.output()
