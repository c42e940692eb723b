#!/bin/sh
echo "running with $(cat /app/account.txt)"
