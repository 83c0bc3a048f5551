# The Standing worker image used by docker-compose.yml.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY standing ./standing
COPY streams ./streams
COPY topology ./topology
COPY schemas ./schemas
RUN pip install --no-cache-dir .
ENV STANDING_DATA_DIR=/data \
    STANDING_WEB_HOST=0.0.0.0
VOLUME /data
EXPOSE 6066 9464
ENTRYPOINT ["standing"]
CMD ["worker"]
