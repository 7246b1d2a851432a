"""`tao-dagster serve`: the current champion behind an OpenAI-compatible endpoint whose traffic feeds the flywheel.

    application --/v1/chat/completions--> proxy --> vLLM's OpenAI server for the champion (a child process)
                                            |
                                            └--> rotated JSONL files in the log location --> the sensor

server.py runs it, proxy.py is the endpoint, champion.py which backend answers and how it switches, backends.py the vLLM
processes, tracelog.py the log files. Dagster-free: the sensor finds the files like any others.
"""
