import castore


async def test_memory_roundtrip() -> None:
    svc = castore.from_addr("memory://")
    d = await svc.put(b"Hello World!")
    assert d.hex() == "5ca7815adcb484e9a136c11efe69c1d530176d549b5d18d038eb5280b4b3470c"
    assert await svc.get(d) == b"Hello World!"
