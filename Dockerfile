# One image for every role; the command picks it (default: the runtime, a drop-in for the course's):
#   python -m runtime            the function runtime (reads /opt/usermodule.py by default)
#   python -m runtime.collector  the host collector
#   streamlit run app ...        the dashboard
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp \
    WORK_DIR=/tmp/runtime

WORKDIR /app
COPY requirements.txt .
RUN pip install -r requirements.txt

COPY runtime/ runtime/
COPY app/ app/
COPY .streamlit/ .streamlit/
COPY usermodule.py .
# Compile once at build time: nothing is written to the root filesystem at run time.
RUN python -m compileall -q runtime app usermodule.py \
    && useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin runtime

USER 10001
EXPOSE 8080 8501
CMD ["python", "-m", "runtime"]
