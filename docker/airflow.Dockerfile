# Airflow 3 with the project's pinned Python set, a JRE for spark-submit and Spark's Kafka
# connector jars. Built by docker-compose (image regstream-airflow).
FROM maven:3.9.9-eclipse-temurin-17 AS jars
COPY stackctl/maven/spark-kafka.pom.xml /build/pom.xml
RUN mvn -B -q -f /build/pom.xml \
      org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory=/build/jars \
 && cd /build/jars && ls | grep -Ev '^(spark-sql-kafka-0-10|spark-token-provider-kafka-0-10|kafka-clients|commons-pool2)' | xargs rm -f

FROM apache/airflow:3.3.2-python3.11
USER root
RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless default-libmysqlclient-dev \
      pkg-config build-essential \
 && rm -rf /var/lib/apt/lists/*
COPY --from=jars /build/jars /opt/regstream/jars
USER airflow
COPY requirements.txt /tmp/requirements.txt
RUN pip install --no-cache-dir -r /tmp/requirements.txt \
 && pip install --no-cache-dir --force-reinstall --no-deps "$(grep '^pyspark==' /tmp/requirements.txt)"
# the project itself (regstream, stackctl, the `regstream` command), as `make up` installs it
COPY --chown=airflow pyproject.toml README.md /opt/regstream/src/
COPY --chown=airflow plugins/regstream /opt/regstream/src/plugins/regstream
COPY --chown=airflow stackctl /opt/regstream/src/stackctl
RUN pip install --no-cache-dir --no-deps /opt/regstream/src
