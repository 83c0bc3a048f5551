# The Standing worker image used by docker-compose.yml.
# Built in two stages: the first has a C compiler for streams/_state_codec.c
# (the users table's codec) and topology/_routing.c (murmur2) and builds every
# wheel; the image itself is slim.
FROM python:3.11 AS build
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY standing ./standing
COPY streams ./streams
COPY topology ./topology
COPY schemas ./schemas
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[registry]'

FROM python:3.11-slim
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
ENV STANDING_DATA_DIR=/data \
    STANDING_WEB_HOST=0.0.0.0
VOLUME /data
EXPOSE 6066 9464
ENTRYPOINT ["standing"]
CMD ["worker"]
