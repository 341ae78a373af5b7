#!/bin/bash
# What yapapi's webapp example runs to start its database: rqlited in the background, its data in
# /rqlite/file/data, its output in /run.
/bin/rqlited -http-addr 0.0.0.0:4001 /rqlite/file/data > /run/out 2> /run/err &
