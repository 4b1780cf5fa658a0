"""The pure core of fstore: imports only the standard library (and numpy/pyarrow in vectorised paths).

A unit test asserts that importing it loads none of faust, pyspark, redis, fastapi or feast.
"""
