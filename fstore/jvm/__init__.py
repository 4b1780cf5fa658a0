"""JVM artifacts fstore runs locally: Apache Kafka's broker jars and delta-spark's jars, from Maven Central.

:mod:`fstore.jvm.maven` resolves a set of Maven coordinates once (``make setup`` → ``fstore services
install``) into a cache directory; :mod:`fstore.jvm.artifacts` names the sets and gives their classpaths.
Nothing downloads at run time: a job or a service finds the cached jars or reports what is missing.
"""
