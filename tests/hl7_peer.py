"""A real HL7 v2 MLLP listener for tests (a RIS, as far as our sender can tell): python-hl7's asyncio server on a free
loopback port, answering each message as the test says."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any

import hl7
from hl7.mllp import start_hl7_server

from peers import free_port

Answer = Callable[[hl7.Message], "bytes | list[bytes] | None"]


def framed(message: hl7.Message | str) -> bytes:
    return b"\x0b" + str(message).encode("utf-8") + b"\x1c\x0d"


class MllpListener:
    """python-hl7's asyncio MLLP server on a free loopback port, run by its own event loop in a thread.

    Each message received is put (raw text) in ``received``; ``answer`` makes the bytes sent back: one block, a
    list of chunks sent separately, or None to keep the connection open without answering.
    """

    def __init__(self, answer: Answer) -> None:
        self.port = free_port()
        self.received: queue.Queue[str] = queue.Queue()
        self._answer = answer
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="mllp-listener", daemon=True)
        self._server: asyncio.AbstractServer | None = None

    def __enter__(self) -> MllpListener:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(
            start_hl7_server(self._handle, "127.0.0.1", self.port), self._loop
        )
        self._server = future.result(timeout=10)  # listening once this returns
        return self

    def __exit__(self, *exc_info: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        assert not self._thread.is_alive()
        self._loop.close()

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    async def _handle(self, reader: Any, writer: Any) -> None:
        try:
            block: bytes = await reader.readblock()
            text = block.decode("utf-8")
            self.received.put(text)
            answer = self._answer(hl7.parse(text))
            if answer is None:
                await reader.read()  # returns when the client hangs up
                return
            for chunk in answer if isinstance(answer, list) else [answer]:
                writer.write(chunk)
                await writer.drain()
                if isinstance(answer, list):
                    # Deliberately apart, so the client gets the ACK in two reads.
                    await asyncio.sleep(0.2)
        finally:
            writer.close()


def ack(code: str, text: str = "") -> Answer:
    def answer(message: hl7.Message) -> bytes:
        reply = message.create_ack(code)
        if text:
            reply["MSA.F3"] = message.escape(text)
        return framed(reply)

    return answer
